/**
 * rpc/limits and rpc/peercred's pure parts: the per-uid read rate, the rule
 * count per request, and the role a peer's credentials give it.
 */
import test from 'ava';
import { RateLimiter, Slots, checkRuleCount } from '../../src/rpc/limits.js';
import { roleOf } from '../../src/rpc/peercred.js';

test('a uid gets 4 lists in a burst, then 2 a second; stats are cheap; uids do not share a bucket', (t) => {
  const r = new RateLimiter({ burst: 40, perSecond: 20 });
  for (let i = 0; i < 4; i++) r.take(1000, 'list', 0);
  const e = t.throws(() => r.take(1000, 'list', 0));
  t.is((e as any).code, 'EBUSY');
  t.regex(e!.message, /retry in 500 ms/);
  t.notThrows(() => r.take(1001, 'list', 0));
  t.notThrows(() => r.take(1000, 'list', 500));
  t.notThrows(() => r.take(1000, 'status', 500));
  // A live view every 2 s: one list and 30 stats.
  const v = new RateLimiter({ burst: 40, perSecond: 20 });
  for (let tick = 0; tick < 30; tick++) {
    v.take(7, 'list', tick * 2000);
    for (let j = 0; j < 30; j++) v.take(7, 'stats', tick * 2000);
  }
  t.pass();
});

test('device rules per request: 4,096 for admin, 256 for others, counted over every policy in it', (t) => {
  const rules = (n: number) => Array.from({ length: n }, () => 'c 1:3 r');
  t.notThrows(() => checkRuleCount({ devices: { allow: rules(2048), deny: rules(2048) } }, true));
  t.is((t.throws(() => checkRuleCount({ devices: { allow: rules(2049), deny: rules(2048) } }, true)) as any).code, 'E2BIG');
  t.notThrows(() => checkRuleCount({ jobDevices: { deny: rules(128) }, stepDevices: { deny: rules(128) } }, false));
  t.is((t.throws(() => checkRuleCount({ jobDevices: { deny: rules(128) }, devices: { allow: rules(129) } }, false)) as any).code, 'E2BIG');
});

test('roles: root and operators admin, allowed uids user, read-only groups (primary or supplementary) reader, others none', (t) => {
  const p = { operatorUids: [64030], allowUids: [1000], readOnlyGids: [500] };
  // Supplementary groups are read only when uid and gid do not decide (one getsockopt fewer a connection).
  t.is(roleOf({ pid: 1, uid: 1000, gid: 1000 }, () => {
    t.fail('groups read for an allowed uid');
    return [];
  }, p), 'user');
  t.is(roleOf({ pid: 1, uid: 1003, gid: 1003 }, () => {
    t.fail('groups read with no read-only group configured');
    return [];
  }, { ...p, readOnlyGids: [] }), null);
  t.is(roleOf({ pid: 1, uid: 0, gid: 0 }, () => [], p), 'admin');
  t.is(roleOf({ pid: 1, uid: 64030, gid: 64030 }, () => [], p), 'admin');
  t.is(roleOf({ pid: 1, uid: 1000, gid: 1000 }, () => [500], p), 'user');
  t.is(roleOf({ pid: 1, uid: 1001, gid: 500 }, () => [], p), 'reader');
  t.is(roleOf({ pid: 1, uid: 1002, gid: 1002 }, () => [20, 500], p), 'reader');
  t.is(roleOf({ pid: 1, uid: 1003, gid: 1003 }, () => [20], p), null);
});

test('a freed slot is handed on in a later turn: what the loop has waiting runs between two holders', async (t) => {
  const slots = new Slots(1);
  const order: string[] = [];
  const first = slots.run(async () => {
    order.push('first');
    setImmediate(() => order.push('waiting on the loop'));
  });
  const second = slots.run(async () => {
    order.push('second');
  });
  await Promise.all([first, second]);
  t.deepEqual(order, ['first', 'waiting on the loop', 'second']);
});

test('what a request costs a user: a change 1, a device policy 4 on top, list 10; hello and status nothing', (t) => {
  for (const op of ['job.create', 'step.create', 'attach', 'task.place', 'destroy', 'signal', 'freeze', 'thaw'] as const) t.is(RateLimiter.costOf({ op }), 1, op);
  t.is(RateLimiter.costOf({ op: 'step.create', devices: { deny: [] } } as never), 5);
  t.is(RateLimiter.costOf({ op: 'task.place', stepDevices: {} } as never), 5);
  t.is(RateLimiter.costOf({ op: 'list' }), 10);
  t.is(RateLimiter.costOf({ op: 'hello' }), 0);
  t.is(RateLimiter.costOf({ op: 'status' }), 0);
  t.true(RateLimiter.slotted('list') && RateLimiter.slotted('stats') && !RateLimiter.slotted('task.place'));
});
