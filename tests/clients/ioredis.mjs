// A scripted ioredis session through Keyway; run by tests/clients.rs.
//
//   node ioredis.mjs PORT
//
// ioredis speaks RESP2 only. Keyway over three servers, default write policy. Every check throws
// on a wrong result; the last line printed is `ok`.
import assert from 'node:assert/strict';
import Redis from 'ioredis';

const port = Number(process.argv[2]);

function client() {
  const c = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0, retryStrategy: () => null });
  c.on('error', (e) => { console.error('client error', e); process.exitCode = 1; });
  return c;
}

const range = (n) => Array.from({ length: n }, (_, i) => i);

async function plainCommands(c) {
  assert.equal(await c.ping(), 'PONG');
  // connectionName: CLIENT SETNAME when it connects.
  const named = new Redis({ host: '127.0.0.1', port, connectionName: 'keyway-io' });
  assert.equal(await named.client('GETNAME'), 'keyway-io');
  named.disconnect();
  assert.match(await c.client('INFO'), /resp=2/);
  assert.equal(await c.set('io:s', 'v1'), 'OK');
  assert.equal(await c.get('io:s'), 'v1');
  assert.equal(await c.get('io:missing'), null);
  assert.equal(await c.set('io:s', 'v2', 'NX'), null);
  assert.equal(await c.incr('io:n'), 1);
  assert.equal(await c.incrby('io:n', 41), 42);
  assert.equal(await c.incrbyfloat('io:f', '1.5'), '1.5');
  assert.equal(await c.set('io:e', 'x', 'EX', 100), 'OK');
  const ttl = await c.ttl('io:e');
  assert.ok(ttl > 0 && ttl <= 100, `TTL ${ttl}`);
  assert.equal(await c.hset('io:h', { f1: 'a', f2: 'b' }), 2);
  assert.deepEqual(await c.hgetall('io:h'), { f1: 'a', f2: 'b' });
  assert.equal(await c.sadd('io:set', 'x', 'y', 'z'), 3);
  assert.deepEqual((await c.smembers('io:set')).sort(), ['x', 'y', 'z']);
  assert.equal(await c.zadd('io:z', 1.5, 'a', 2.25, 'b'), 2);
  assert.equal(await c.zscore('io:z', 'b'), '2.25');
  assert.deepEqual(await c.zrange('io:z', 0, -1, 'WITHSCORES'), ['a', '1.5', 'b', '2.25']);
  assert.equal(await c.rpush('io:l', '1', '2', '3'), 3);
  assert.deepEqual(await c.lrange('io:l', 0, -1), ['1', '2', '3']);
  assert.deepEqual(await c.lpop('io:l', 2), ['1', '2']);
  const info = await c.info('keyspace');
  assert.match(info, /^db0:keys=\d+,expires=\d+/m, 'INFO keyspace');
}

async function multiKey(c) {
  const keys = range(60).map((i) => `io:k${i}`);
  assert.equal(await c.mset(Object.fromEntries(keys.map((k, i) => [k, `v${i}`]))), 'OK');
  assert.deepEqual(await c.mget(keys), keys.map((_, i) => `v${i}`));
  assert.deepEqual(await c.mget('io:k0', 'io:nothing', 'io:k59'), ['v0', null, 'v59']);
  assert.equal(await c.exists(...keys.slice(0, 10), 'io:nothing'), 10);
  assert.equal(await c.del(...keys.slice(50), 'io:nothing'), 10);
  await c.sadd('{io:u}:a', '1', '2', '3');
  await c.sadd('{io:u}:b', '2', '3', '4');
  assert.equal(await c.sinterstore('{io:u}:both', '{io:u}:a', '{io:u}:b'), 2);
  assert.deepEqual((await c.smembers('{io:u}:both')).sort(), ['2', '3']);
  await assert.rejects(c.sinterstore('io:dest', 'io:set', '{io:u}:a'), /CROSSSLOT/);
  const found = new Set();
  await new Promise((resolve, reject) => {
    c.scanStream({ match: 'io:k*', count: 7 })
      .on('data', (batch) => batch.forEach((k) => found.add(k)))
      .on('end', resolve)
      .on('error', reject);
  });
  assert.equal(found.size, 50, 'SCAN over servers');
}

async function pipelines(c) {
  const p = c.pipeline();
  for (const i of range(30)) p.set(`io:p${i}`, String(i));
  for (const i of range(30)) p.incr(`io:p${i}`);
  p.get('io:p7');
  p.lpush('io:s', 'x'); // WRONGTYPE in place
  p.hgetall('io:h');
  const out = await p.exec();
  assert.deepEqual(out.slice(0, 30), range(30).map(() => [null, 'OK']));
  assert.deepEqual(out.slice(30, 60), range(30).map((i) => [null, i + 1]));
  assert.deepEqual(out[60], [null, '8']);
  assert.match(String(out[61][0]), /WRONGTYPE/);
  assert.deepEqual(out[62], [null, { f1: 'a', f2: 'b' }]);
  // MULTI/EXEC on one slot.
  const tx = await c.multi().set('{io:acct}:a', '10').incrby('{io:acct}:a', 5).get('{io:acct}:a').exec();
  assert.deepEqual(tx, [[null, 'OK'], [null, 15], [null, '15']]);
  // Two slots: refused at queuing; EXEC answers EXECABORT; nothing applied.
  await c.set('{io:acct}:b', 'before');
  await assert.rejects(c.multi().set('{io:acct}:b', 'after').set('{io:other}:c', 'x').exec(), /EXECABORT/);
  assert.equal(await c.get('{io:acct}:b'), 'before');
  assert.equal(await c.get('{io:other}:c'), null);
}

async function incrementer(key, times, retries) {
  const c = client();
  for (let i = 0; i < times; i++) {
    for (;;) {
      await c.watch(key);
      const current = Number((await c.get(key)) ?? 0);
      const res = await c.multi().set(key, String(current + 1)).exec();
      if (res !== null) {
        assert.deepEqual(res, [[null, 'OK']]);
        break;
      }
      retries.n++;
    }
  }
  c.disconnect();
}

async function optimisticLocking(c) {
  const key = '{io:ctr}:value';
  await c.del(key);
  const retries = { n: 0 };
  await Promise.all(range(4).map(() => incrementer(key, 50, retries)));
  assert.equal(await c.get(key), '200', 'WATCH counter after 4 x 50 increments');
  console.log(`watch retries: ${retries.n}`);
  const mine = client();
  await mine.watch(key);
  await c.set(key, 'changed');
  assert.equal(await mine.multi().set(key, 'mine').exec(), null, 'EXEC after a watched change');
  assert.equal(await c.get(key), 'changed');
  mine.disconnect();
}

async function scripts(c) {
  // defineCommand sends EVALSHA and falls back to EVAL on NOSCRIPT.
  c.defineCommand('addTo', {
    numberOfKeys: 2,
    lua: "local v = redis.call('INCRBY', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], v); return v",
  });
  assert.equal(await c.addTo('{io:lua}:a', '{io:lua}:b', 7), 7);
  assert.equal(await c.addTo('{io:lua}:a', '{io:lua}:b', 3), 10);
  assert.equal(await c.get('{io:lua}:b'), '10');
  await assert.rejects(c.addTo('io:lua:x', '{io:lua}:b', 1), /CROSSSLOT/);
}

async function main() {
  const c = client();
  await plainCommands(c);
  await multiKey(c);
  await pipelines(c);
  await optimisticLocking(c);
  await scripts(c);
  c.disconnect();
  console.log('ok');
}

await main();
