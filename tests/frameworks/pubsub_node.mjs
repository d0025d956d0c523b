// ioredis and node-redis subscribers through one Keyway, publishers on another Keyway over the
// same servers (tests/frameworks.rs).
//   node pubsub_node.mjs SUB_PORT PUB_PORT CHANNEL...
// Each subscriber subscribes to the channels (one per server) and pattern-subscribes `fw.*`;
// 100 messages per channel and 20 pattern messages are published from the other Keyway, by
// ioredis and by node-redis in turn. Each channel's messages must arrive whole and in order
// (order across channels of different servers is not defined). node-redis runs in RESP2 and
// RESP3. Prints `ok` last.
import Redis from 'ioredis';
import { createClient } from 'redis';

const [subPort, pubPort, ...channels] = process.argv.slice(2);
const PER_CHANNEL = 100;

function fail(msg) {
  console.log(`FAIL: ${msg}`);
  process.exit(1);
}

// A subscriber's record of what it received.
function recorder() {
  const byChannel = new Map(channels.map((c) => [c, []]));
  const patterned = [];
  return {
    byChannel,
    patterned,
    message: (channel, data) => byChannel.get(channel)?.push(data),
    pmessage: (data) => patterned.push(data),
    count: () => [...byChannel.values()].reduce((a, l) => a + l.length, 0) + patterned.length,
  };
}

async function ioredisSubscriber() {
  const sub = new Redis({ port: Number(subPort), lazyConnect: true });
  await sub.connect();
  const rec = recorder();
  sub.on('message', (c, m) => rec.message(c, m));
  sub.on('pmessage', (_p, _c, m) => rec.pmessage(m));
  const n = await sub.subscribe(...channels);
  if (n !== channels.length) fail(`ioredis subscribe counted ${n}`);
  await sub.psubscribe('fw.*');
  return { name: 'ioredis', rec, close: () => sub.quit() };
}

async function nodeRedisSubscriber(resp) {
  const sub = createClient({ url: `redis://127.0.0.1:${subPort}`, RESP: resp });
  sub.on('error', (e) => fail(`node-redis RESP${resp}: ${e}`));
  await sub.connect();
  const rec = recorder();
  await sub.subscribe(channels, (m, c) => rec.message(c, m));
  await sub.pSubscribe('fw.*', (m) => rec.pmessage(m));
  return { name: `node-redis RESP${resp}`, rec, close: () => sub.quit() };
}

const subscribers = [await ioredisSubscriber(), await nodeRedisSubscriber(2), await nodeRedisSubscriber(3)];

const ioPub = new Redis({ port: Number(pubPort) });
const nrPub = createClient({ url: `redis://127.0.0.1:${pubPort}` });
await nrPub.connect();
// Three clients on one Keyway are one subscriber connection per server.
for (const c of channels) {
  const [, n] = await ioPub.pubsub('NUMSUB', c);
  if (Number(n) !== 1) fail(`NUMSUB ${c} = ${n} through the other Keyway, want 1`);
}
for (let i = 0; i < PER_CHANNEL; i++) {
  for (const c of channels) {
    const receivers = i % 2 ? await ioPub.publish(c, `${c}:${i}`) : await nrPub.publish(c, `${c}:${i}`);
    if (Number(receivers) !== 1) fail(`PUBLISH ${c} reached ${receivers}, want 1`);
  }
}
const patternWant = Array.from({ length: 20 }, (_, i) => `fw.${i}`);
for (const m of patternWant) await ioPub.publish(`fw.${m}`, m);

const want = channels.length * PER_CHANNEL + patternWant.length;
const deadline = Date.now() + 20_000;
while (subscribers.some((s) => s.rec.count() < want) && Date.now() < deadline)
  await new Promise((r) => setTimeout(r, 50));
for (const s of subscribers) {
  for (const c of channels) {
    const got = s.rec.byChannel.get(c);
    const exp = Array.from({ length: PER_CHANNEL }, (_, i) => `${c}:${i}`);
    if (JSON.stringify(got) !== JSON.stringify(exp))
      fail(`${s.name}: channel ${c}: ${got.length} of ${PER_CHANNEL} messages, or out of order`);
  }
  if (JSON.stringify([...s.rec.patterned].sort()) !== JSON.stringify([...patternWant].sort()))
    fail(`${s.name}: ${s.rec.patterned.length} of ${patternWant.length} pattern messages`);
  console.log(`${s.name}: ${s.rec.count()} messages (${channels.length} channels, 1 pattern)`);
}
for (const s of subscribers) await s.close();
await ioPub.quit();
await nrPub.quit();
console.log('ok');
