// A scripted node-redis session through Keyway; run by tests/clients.rs.
//
//   node node_redis.mjs PORT RESP SCENARIO
//
// RESP is 2 or 3 (node-redis's RESP option); SCENARIO is `session` (Keyway over three servers,
// default write policy) or `two_phase` (replicas = 2, write = "two_phase"). Every check throws on
// a wrong result; the last line printed is `ok`.
import assert from 'node:assert/strict';
import { createClient, RESP_TYPES, WatchError } from 'redis';

const [port, resp, scenario] = process.argv.slice(2);
const RESP = Number(resp);
// node-redis builds objects without a prototype; compare their contents.
const plain = (x) => JSON.parse(JSON.stringify(x));

async function client(typeMapping, name) {
  let c = createClient({ url: `redis://127.0.0.1:${port}`, RESP, name, socket: { reconnectStrategy: false } });
  if (typeMapping) c = c.withTypeMapping(typeMapping);
  c.on('error', (e) => { console.error('client error', e); process.exitCode = 1; });
  await c.connect();
  return c;
}

async function plainCommands(c) {
  assert.equal(await c.ping(), 'PONG');
  const info = await c.sendCommand(['CLIENT', 'INFO']);
  assert.match(String(info), new RegExp(`resp=${RESP}`), 'CLIENT INFO resp');
  // A named client: HELLO 3 SETNAME (RESP3) or CLIENT SETNAME (RESP2) when it connects.
  const named = await client(undefined, 'keyway-nr');
  assert.equal(await named.clientGetName(), 'keyway-nr');
  assert.match(String(await c.sendCommand(['CLIENT', 'LIST'])), new RegExp(`name=keyway-nr .*resp=${RESP}`));
  named.destroy();
  assert.equal(await c.set('nr:s', 'v1'), 'OK');
  assert.equal(await c.get('nr:s'), 'v1');
  assert.equal(await c.get('nr:missing'), null);
  assert.equal(await c.set('nr:s', 'v2', { NX: true }), null);
  assert.equal(await c.incr('nr:n'), 1);
  assert.equal(await c.incrBy('nr:n', 41), 42);
  assert.equal(await c.expire('nr:s', 100), 1);
  const ttl = await c.ttl('nr:s');
  assert.ok(ttl > 0 && ttl <= 100, `TTL ${ttl}`);
  assert.equal(await c.hSet('nr:h', { f1: 'a', f2: 'b' }), 2);
  assert.deepEqual({ ...(await c.hGetAll('nr:h')) }, { f1: 'a', f2: 'b' });
  assert.equal(await c.sAdd('nr:set', ['x', 'y', 'z']), 3);
  assert.deepEqual([...(await c.sMembers('nr:set'))].sort(), ['x', 'y', 'z']);
  assert.equal(await c.zAdd('nr:z', [{ score: 1.5, value: 'a' }, { score: 2.25, value: 'b' }]), 2);
  assert.equal(await c.zScore('nr:z', 'b'), 2.25);
  assert.equal(await c.zScore('nr:z', 'none'), null);
  assert.deepEqual(await c.zRangeWithScores('nr:z', 0, -1), [
    { value: 'a', score: 1.5 },
    { value: 'b', score: 2.25 },
  ]);
  assert.equal(await c.rPush('nr:l', ['1', '2', '3']), 3);
  assert.deepEqual(await c.lRange('nr:l', 0, -1), ['1', '2', '3']);
  const id = await c.xAdd('nr:st', '*', { a: '1' });
  assert.deepEqual(plain(await c.xRange('nr:st', '-', '+')), [{ id, message: { a: '1' } }]);
  assert.deepEqual(plain(await c.zPopMin('nr:z')), { value: 'a', score: 1.5 });
  assert.equal(await c.zAdd('nr:z', { score: 1.5, value: 'a' }), 1);
  assert.deepEqual(plain(await c.configGet('maxmemory')), { maxmemory: '0' });
  assert.match(await c.info('keyspace'), /db0:keys=\d+,expires=\d+/);
  assert.equal(await c.dbSize(), (await c.keys('nr:*')).length);
  // What the wire said. sendCommand keeps the parser's own types: a RESP3 map is an object,
  // a double a number; a RESP2 reply is a flat array, a string.
  const h = await c.sendCommand(['HGETALL', 'nr:h']);
  const d = await c.sendCommand(['ZSCORE', 'nr:z', 'b']);
  // A set shows through a type mapping (sendCommand turns sets into arrays).
  const typed = await client({ [RESP_TYPES.SET]: Set });
  const s = await typed.sMembers('nr:set');
  if (RESP === 3) {
    assert.ok(!Array.isArray(h) && typeof h === 'object', 'HGETALL is a map');
    assert.deepEqual({ ...h }, { f1: 'a', f2: 'b' });
    assert.ok(s instanceof Set, 'SMEMBERS is a set');
    assert.deepEqual([...s].sort(), ['x', 'y', 'z']);
    assert.equal(d, 2.25, 'ZSCORE is a double');
  } else {
    assert.deepEqual(h, ['f1', 'a', 'f2', 'b'], 'HGETALL is an array');
    assert.ok(Array.isArray(s), 'SMEMBERS is an array');
    assert.equal(d, '2.25', 'ZSCORE is a string');
  }
  typed.destroy();
}

async function multiKey(c) {
  const keys = Array.from({ length: 60 }, (_, i) => `nr:k${i}`);
  assert.equal(await c.mSet(keys.map((k, i) => [k, `v${i}`])), 'OK');
  assert.deepEqual(await c.mGet(keys), keys.map((_, i) => `v${i}`));
  assert.deepEqual(await c.mGet(['nr:k0', 'nr:nothing', 'nr:k59']), ['v0', null, 'v59']);
  assert.equal(await c.exists([...keys.slice(0, 10), 'nr:nothing']), 10);
  assert.equal(await c.del([...keys.slice(50), 'nr:nothing']), 10);
  // Hash-tagged keys stay whole.
  await c.sAdd('{nr:u}:a', ['1', '2', '3']);
  await c.sAdd('{nr:u}:b', ['2', '3', '4']);
  assert.equal(await c.sInterStore('{nr:u}:both', ['{nr:u}:a', '{nr:u}:b']), 2);
  assert.deepEqual([...(await c.sMembers('{nr:u}:both'))].sort(), ['2', '3']);
  await assert.rejects(c.sInterStore('nr:dest', ['nr:set', '{nr:u}:a']), /CROSSSLOT/);
  const found = new Set();
  for await (const batch of c.scanIterator({ MATCH: 'nr:k*', COUNT: 7 })) {
    for (const k of batch) found.add(k);
  }
  assert.equal(found.size, 50, 'SCAN over servers');
}

async function pipelines(c) {
  // execAsPipeline: no MULTI, any keys, replies in order.
  const p = c.multi();
  for (let i = 0; i < 30; i++) p.set(`nr:p${i}`, String(i));
  for (let i = 0; i < 30; i++) p.incr(`nr:p${i}`);
  p.get('nr:p7');
  const out = await p.execAsPipeline();
  assert.deepEqual(out.slice(0, 30), Array(30).fill('OK'));
  assert.deepEqual(out.slice(30, 60), Array.from({ length: 30 }, (_, i) => i + 1));
  assert.equal(out[60], '8');
  // Commands sent together without waiting are pipelined by node-redis.
  const auto = await Promise.all(keyRange(20).map((i) => c.get(`nr:p${i}`)));
  assert.deepEqual(auto, keyRange(20).map((i) => String(i + 1)));
  // MULTI/EXEC on one slot.
  const tx = await c.multi().set('{nr:acct}:a', '10').incrBy('{nr:acct}:a', 5).get('{nr:acct}:a').exec();
  assert.deepEqual(tx, ['OK', 15, '15']);
  // Two slots in one transaction: refused at queuing, nothing applied.
  await c.set('{nr:acct}:b', 'before');
  await assert.rejects(c.multi().set('{nr:acct}:b', 'after').set('{nr:other}:c', 'x').exec(), /CROSSSLOT|EXECABORT/);
  assert.equal(await c.get('{nr:acct}:b'), 'before');
  assert.equal(await c.get('{nr:other}:c'), null);
}

function keyRange(n) {
  return Array.from({ length: n }, (_, i) => i);
}

async function incrementer(key, times, retries) {
  const c = await client();
  for (let i = 0; i < times; i++) {
    for (;;) {
      await c.watch(key);
      const current = Number((await c.get(key)) ?? 0);
      try {
        await c.multi().set(key, String(current + 1)).exec();
        break;
      } catch (e) {
        if (!(e instanceof WatchError)) throw e;
        retries.n++;
      }
    }
  }
  c.destroy();
}

async function optimisticLocking(c) {
  const key = '{nr:ctr}:value';
  await c.del(key);
  const retries = { n: 0 };
  await Promise.all(keyRange(4).map(() => incrementer(key, 50, retries)));
  assert.equal(await c.get(key), '200', 'WATCH counter after 4 x 50 increments');
  console.log(`watch retries: ${retries.n}`);
  // A watched key changed by another client: EXEC answers null, node-redis throws WatchError.
  const mine = await client();
  await mine.watch(key);
  await c.set(key, 'changed');
  await assert.rejects(mine.multi().set(key, 'mine').exec(), WatchError);
  assert.equal(await c.get(key), 'changed');
  await mine.watch(key);
  assert.deepEqual(await mine.multi().set(key, 'mine').exec(), ['OK']);
  assert.equal(await c.get(key), 'mine');
  mine.destroy();
}

async function twoPhase(c) {
  const info = await c.sendCommand(['CLIENT', 'INFO']);
  assert.match(String(info), new RegExp(`resp=${RESP}`), 'CLIENT INFO resp');
  const keys = keyRange(12).map((i) => `nrtp:${i}`);
  const m = c.multi();
  keys.forEach((k, i) => m.set(k, `v${i}`));
  m.incrBy('nrtp:counter', 5);
  assert.deepEqual(await m.exec(), [...Array(12).fill('OK'), 5]);
  assert.deepEqual(await c.mGet(keys), keys.map((_, i) => `v${i}`));
  // A queuing error aborts it: nothing applied.
  const bad = c.multi();
  keys.forEach((k) => bad.set(k, 'aborted'));
  bad.addCommand(['NOSUCHCOMMAND', 'x']);
  await assert.rejects(bad.exec(), /EXECABORT|unknown command/);
  assert.deepEqual(await c.mGet(keys), keys.map((_, i) => `v${i}`));
}

async function main() {
  const c = await client();
  if (scenario === 'session') {
    await plainCommands(c);
    await multiKey(c);
    await pipelines(c);
    await optimisticLocking(c);
  } else if (scenario === 'two_phase') {
    await twoPhase(c);
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
  c.destroy();
  console.log('ok');
}

await main();
