/** Command-line conventions as pure functions: yes/no words, sizes in MiB, --metrics forms. */
import test from 'ava';
import { EnvCommand, opt, parseBool, usageLine } from '../../src/config/cli.js';
import { parseSize } from '../../src/config/size.js';
import { parseListen } from '../../src/metrics/listen.js';
import { ConfigError } from '../../src/errors.js';

const M = 1024 ** 2;

test('parseBool: every spelling of yes and no, empty is no, anything else is neither', (t) => {
  for (const v of ['1', 'yes', 'YES', 'Yes', 'true', 'TRUE', 'on', 'On', 'y', ' yes ']) t.is(parseBool(v), true, v);
  for (const v of ['0', 'no', 'NO', 'false', 'False', 'off', 'OFF', 'n', '', '  ']) t.is(parseBool(v), false, JSON.stringify(v));
  for (const v of ['2', 'maybe', 'nope', 'yess', '-1']) t.is(parseBool(v), undefined, v);
});

test('sizes: a bare number on the command line is MiB (as --mem), suffixes as written, the protocol unit stays bytes', (t) => {
  t.is(parseSize('1024', '--memory', 'M'), 1024 * M);
  t.is(parseSize('1.5', '--memory', 'M'), 1.5 * M);
  t.is(parseSize('512K', '--memory', 'M'), 512 * 1024);
  t.is(parseSize('4G', '--memory', 'M'), 4 * 1024 * M);
  t.is(parseSize('1T', '--memory', 'M'), 1024 ** 4);
  t.is(parseSize('2048B', '--memory', 'M'), 2048, 'an explicit B means bytes');
  t.is(parseSize('1024'), 1024, 'the default unit of a bare number is bytes');
  t.throws(() => parseSize('4X', '--memory', 'M'), { message: /--memory: expected a size/ });
});

test('--metrics: PORT is loopback, ADDR:PORT, [IPV6]:PORT, unix:PATH; mistakes are configuration errors', (t) => {
  t.deepEqual(parseListen('9102'), { host: '127.0.0.1', port: 9102 });
  t.deepEqual(parseListen('9100'), { host: '127.0.0.1', port: 9100 });
  t.deepEqual(parseListen('0'), { host: '127.0.0.1', port: 0 });
  t.deepEqual(parseListen('0.0.0.0:9102'), { host: '0.0.0.0', port: 9102 });
  t.deepEqual(parseListen('localhost:9102'), { host: 'localhost', port: 9102 });
  t.deepEqual(parseListen('[::1]:9102'), { host: '::1', port: 9102 });
  t.deepEqual(parseListen('unix:/run/cgstepd/metrics.sock'), { path: '/run/cgstepd/metrics.sock' });
  for (const bad of ['', 'x', 'x:y', '::1:9102', '99999', '127.0.0.1:', ':9102x', 'unix:relative', '[::1]9102']) {
    const err = t.throws(() => parseListen(bad), undefined, bad);
    t.true(err instanceof ConfigError, bad);
  }
});

test('usage line: one line naming the command and its --help', (t) => {
  t.is(usageLine('cgstep run', "error: unknown option '--x'"), "cgstep run: unknown option '--x' (see cgstep run --help)");
});

test('EnvCommand: a value-less flag from its variable in every spelling; empty is unset; an option value wins', (t) => {
  const saved = { ...process.env };
  t.teardown(() => {
    for (const k of ['CGSTEP_JSON', 'CGSTEP_SOCKET']) if (saved[k] === undefined) delete process.env[k]; else process.env[k] = saved[k];
  });
  const parse = (env: Record<string, string | undefined>, argv: string[] = []) => {
    for (const [k, v] of Object.entries(env)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
    const c = new EnvCommand('x').exitOverride().addOption(opt('--json', 'json')).addOption(opt('--socket <path>', 'socket').default('/run/default.sock'));
    c.parse(argv, { from: 'user' });
    return c.opts<{ json?: boolean; socket: string }>();
  };
  for (const v of ['1', 'yes', 'YES', 'true', 'True', 'on', 'ON', 'y']) t.is(parse({ CGSTEP_JSON: v }).json, true, v);
  for (const v of ['0', 'no', 'NO', 'false', 'FALSE', 'off', 'Off', 'n', '']) t.falsy(parse({ CGSTEP_JSON: v }).json, JSON.stringify(v));
  t.is(parse({ CGSTEP_JSON: '0' }, ['--json']).json, true, 'the command line wins');
  t.is(parse({ CGSTEP_JSON: undefined, CGSTEP_SOCKET: '' }).socket, '/run/default.sock', 'an empty variable is unset');
  t.is(parse({ CGSTEP_SOCKET: '/tmp/s' }).socket, '/tmp/s');
  t.is(parse({ CGSTEP_SOCKET: '/tmp/s' }, ['--socket', '/tmp/t']).socket, '/tmp/t');
  t.regex(new EnvCommand('x').addOption(opt('--json', 'json')).helpInformation(), /env: CGSTEP_JSON/);
});
