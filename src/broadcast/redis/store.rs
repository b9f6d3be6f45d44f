//! Reads of what Redis keeps of a topic (see [`keys`](super::keys)): its
//! head and newest messages, for a pod that knows nothing of the topic yet,
//! heads, and the messages from an offset on, for a pod that missed some.

use redis::RedisError;
use redis::aio::MultiplexedConnection;

use super::keys::{Keys, stamped};
use crate::message::Epoch;
use crate::proto::v1::Envelope;
use crate::topic::Topic;

/// A stream entry: its id, then its fields and values in turn.
type Entries = Vec<(String, Vec<Vec<u8>>)>;

/// What Redis holds of one topic.
#[derive(Debug, Default)]
pub struct Held {
    /// The topic's epoch and last offset, if it has numbered anything.
    pub head: Option<(u64, u64)>,
    /// The newest kept messages, oldest first.
    pub kept: Vec<Envelope>,
}

/// `topic`'s head and up to `count` of its newest messages, read together.
pub async fn newest(
    connection: &mut MultiplexedConnection,
    keys: &Keys,
    topic: &Topic,
    count: usize,
) -> Result<Held, RedisError> {
    let (head, mut entries): (Vec<Option<u64>>, Entries) = redis::pipe()
        .atomic()
        .cmd("HMGET")
        .arg(keys.meta(topic))
        .arg("epoch")
        .arg("offset")
        .cmd("XREVRANGE")
        .arg(keys.log(topic))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(count)
        .query_async(connection)
        .await?;
    entries.reverse();
    let head = match head.as_slice() {
        [Some(epoch), Some(offset)] => Some((*epoch, *offset)),
        _ => None,
    };
    Ok(Held {
        head,
        kept: envelopes(entries),
    })
}

/// The heads of `topics`, in their order (`None` for a topic Redis holds
/// nothing of).
pub async fn heads(
    connection: &mut MultiplexedConnection,
    keys: &Keys,
    topics: &[Topic],
) -> Result<Vec<Option<(u64, u64)>>, RedisError> {
    let mut pipe = redis::pipe();
    for topic in topics {
        pipe.cmd("HMGET")
            .arg(keys.meta(topic))
            .arg("epoch")
            .arg("offset");
    }
    let replies: Vec<Vec<Option<u64>>> = pipe.query_async(connection).await?;
    Ok(replies
        .into_iter()
        .map(|head| match head.as_slice() {
            [Some(epoch), Some(offset)] => Some((*epoch, *offset)),
            _ => None,
        })
        .collect())
}

/// Forgets `topic` in Redis (its epoch and offset, and its log) if Redis
/// holds it at `epoch` below `seen`: its next message then starts a new
/// epoch. A topic that moved on meanwhile is left alone.
pub async fn forget(
    connection: &mut MultiplexedConnection,
    keys: &Keys,
    topic: &Topic,
    epoch: Epoch,
    seen: u64,
) -> Result<(), RedisError> {
    redis::Script::new(FORGET)
        .key(keys.meta(topic))
        .key(keys.log(topic))
        .arg(epoch.as_u64())
        .arg(seen)
        .invoke_async(connection)
        .await
}

/// KEYS meta, log; ARGV the epoch and the offset a pod saw.
const FORGET: &str = r#"
local epoch, offset = unpack(redis.call('HMGET', KEYS[1], 'epoch', 'offset'))
if epoch == ARGV[1] and tonumber(offset) < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1], KEYS[2])
end
"#;

/// The kept messages of `topic` from offset `from` to the newest, oldest
/// first. Fewer when some are no longer kept.
pub async fn range(
    connection: &mut MultiplexedConnection,
    keys: &Keys,
    topic: &Topic,
    from: u64,
) -> Result<Vec<Envelope>, RedisError> {
    let entries: Entries = redis::cmd("XRANGE")
        .arg(keys.log(topic))
        .arg(format!("{from}-0"))
        .arg("+")
        .query_async(connection)
        .await?;
    Ok(envelopes(entries))
}

/// The messages of stream entries; an entry that does not read is logged
/// and left out (the topic's subscribers then hear of a gap).
fn envelopes(entries: Entries) -> Vec<Envelope> {
    entries
        .into_iter()
        .filter_map(|(id, fields)| {
            let body = fields.get(1)?;
            stamped(body)
                .map_err(|error| tracing::warn!(%error, %id, "skipping an unreadable message kept in Redis"))
                .ok()
        })
        .collect()
}
