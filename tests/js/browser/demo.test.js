// The demo page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; nothing downloads a browser), each page loaded from a
// real pod: two pages on two pods chat; then the first page's pod is
// SIGKILLed while messages are published, and that page shows every message
// exactly once after it reconnects to the other pod; and with presence on, each
// page lists who is in the room across pods. Screenshots go to
// target/js-screenshots/.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { WebSocket } from "ws";

import { Herald } from "../../../clients/js/herald.js";
import { ROOT, eventually, sequencerOf, sleep, startCluster } from "../lib/pods.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = join(ROOT, "target/js-screenshots");

const cleanup = [];
after(async () => {
  for (const step of cleanup.reverse()) await step();
});

/** The texts of the chat lines on `page`, and the (epoch, offset) of each. */
const lines = (page) =>
  page.$$eval("#log li.msg", (items) => items.map((li) => ({ text: li.querySelector(".text").textContent, at: `${li.dataset.epoch}:${li.dataset.offset}` })));
const notes = (page) => page.$$eval("#log li.note", (items) => items.map((li) => li.textContent));

async function shows(page, text) {
  await eventually(`"${text}" on ${page.url()}`, async () => (await lines(page)).some((l) => l.text === text));
}

/** A demo page of `pod` in `browser` that has joined `room` as `name`. */
async function openDemo(browser, pod, room, name, extra = "") {
  const page = await browser.newPage({ viewport: { width: 900, height: 700 } });
  page.on("pageerror", (error) => console.error(`${name}: ${error.message}`));
  await page.goto(`${pod.httpUrl}/demo?room=${encodeURIComponent(room)}&name=${name}${extra}`);
  await page.click("#join button");
  await eventually(`${name} joined`, async () => (await notes(page)).some((n) => n.startsWith("joined")));
  return page;
}

const launch = () => chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });

test("two demo pages on two pods chat, and the first keeps every message exactly once when its pod is SIGKILLed and it moves to the other pod", async (t) => {
  mkdirSync(SHOTS, { recursive: true });
  const cluster = await startCluster({ count: 2, flags: ["--client-publish", "--client-publish-rate=10000", "--demo"] });
  cleanup.push(() => cluster.stop());
  const room = "room:demo";
  const backend = new Map(cluster.pods.map((pod) => [pod, new Herald(pod.wsUrl, { WebSocket })]));
  cleanup.push(() => backend.forEach((herald) => herald.close()));
  // The first page's pod must not be the room's sequencer: killing that one
  // starts a new epoch (docs/continuity.md), and this test is about the case
  // where nothing is lost.
  const survivor = await sequencerOf(cluster, room, (pod, topic) => backend.get(pod).publish(topic, { name: "probe", text: "probe" }));
  const victim = cluster.pods.find((pod) => pod !== survivor);

  const browser = await launch();
  cleanup.push(() => browser.close());
  const open = (pod, name, extra) => openDemo(browser, pod, room, name, extra);
  const alice = await open(victim, "alice", `&pods=${encodeURIComponent(survivor.wsUrl)}`);
  const bob = await open(survivor, "bob");
  assert.equal(await alice.textContent("#pod"), victim.wsUrl);
  assert.equal(await alice.textContent("#state"), "connected");
  assert.equal(await bob.textContent("#pod"), survivor.wsUrl);

  const say = async (page, text) => {
    await page.fill("#text", text);
    await page.click("#say");
  };
  await say(alice, "hello from alice");
  await shows(bob, "hello from alice");
  await say(bob, "hi alice, bob here");
  await shows(alice, "hi alice, bob here");
  await alice.screenshot({ path: join(SHOTS, "1-alice-chatting.png") });
  await bob.screenshot({ path: join(SHOTS, "1-bob-chatting.png") });

  // A backend publishes through the surviving pod; alice's pod dies midway.
  const writer = backend.get(survivor);
  const sent = [];
  let publishing = true;
  const publisher = (async () => {
    for (let n = 1; publishing; n += 1) {
      await writer.publish(room, { name: "backend", text: `tick ${n}` });
      sent.push(`tick ${n}`);
      await sleep(20);
    }
  })();
  await shows(alice, "tick 10");
  // The page records when its state and resume lines change, by its own clock.
  await alice.evaluate(() => {
    window.seen = {};
    window.herald.on("state", (state) => state === "connected" && (window.seen.connected ??= performance.now()));
  });
  const killedAt = await alice.evaluate(() => performance.now());
  await victim.kill();
  await eventually("alice connected to the other pod", async () => (await alice.textContent("#pod")) === survivor.wsUrl && (await alice.textContent("#state")) === "connected");
  await eventually("alice's resume line", async () => (await notes(alice)).some((n) => n.startsWith("resumed on")));
  const reconnected = await alice.evaluate(() => window.seen.connected);
  t.diagnostic(`SIGKILL → the page connected again ${Math.round(reconnected - killedAt)} ms (from just before the kill)`);
  await sleep(500);
  publishing = false;
  await publisher;
  await shows(alice, sent.at(-1));
  await alice.screenshot({ path: join(SHOTS, "2-alice-after-failover.png") });
  await bob.screenshot({ path: join(SHOTS, "2-bob-after-failover.png") });
  await alice.$$eval("#log li.note", (items) => items.find((li) => li.textContent.startsWith("resumed on")).scrollIntoView({ block: "center" }));
  await alice.screenshot({ path: join(SHOTS, "3-alice-resume-line.png") });

  const shown = await lines(alice);
  for (const text of [...sent, "hello from alice", "hi alice, bob here"]) {
    assert.equal(shown.filter((l) => l.text === text).length, 1, `"${text}" shown ${shown.filter((l) => l.text === text).length} times`);
  }
  assert.equal(new Set(shown.map((l) => l.at)).size, shown.length, "an offset shown twice");
  const resumed = (await notes(alice)).filter((n) => n.startsWith("resumed on"));
  assert.deepEqual(resumed, [`resumed on ${survivor.wsUrl}: recovered true, nothing missed`]);
  assert.deepEqual((await lines(bob)).map((l) => l.text), shown.map((l) => l.text), "the two pages disagree");
});

test("the demo page shows who is in the room across pods, and a page that leaves goes from the other's list", async () => {
  mkdirSync(SHOTS, { recursive: true });
  const cluster = await startCluster({ count: 2, flags: ["--demo", "--presence-topics=room:*"] });
  cleanup.push(() => cluster.stop());
  const browser = await launch();
  cleanup.push(() => browser.close());
  const room = "room:who";
  const here = (page) => page.textContent("#here");
  // Without tokens (--auth none) every entry is "anonymous"; the count says how many.
  const carol = await openDemo(browser, cluster.pods[0], room, "carol");
  await eventually("carol lists herself", async () => (await here(carol)) === "anonymous");
  const dave = await openDemo(browser, cluster.pods[1], room, "dave");
  await eventually("both pages list both, across the two pods", async () => (await here(carol)) === "anonymous ×2" && (await here(dave)) === "anonymous ×2");
  await carol.screenshot({ path: join(SHOTS, "4-carol-who-is-here.png") });
  await dave.close();
  await eventually("dave's leave reaches carol's page", async () => (await here(carol)) === "anonymous");
});
