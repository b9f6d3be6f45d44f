// herald JavaScript client: being written.
export class Herald {}
