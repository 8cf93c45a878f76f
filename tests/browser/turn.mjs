// A private coturn for the relay test: loopback only, random free ports,
// long-term credentials, no TLS/DTLS, its own temp dir (log, pid, user db).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import dgram from 'node:dgram';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { log, waitFor } from './lib.mjs';

/** A port free for both TCP and UDP on 127.0.0.1. */
async function freePort() {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const s = net.createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const p = s.address().port;
        s.close(() => resolve(p));
      });
    });
    const udpFree = await new Promise((resolve) => {
      const u = dgram.createSocket('udp4');
      u.once('error', () => resolve(false));
      u.bind(port, '127.0.0.1', () => u.close(() => resolve(true)));
    });
    if (udpFree) return port;
  }
}

function tcpOpen(port) {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1');
    c.once('connect', () => { c.destroy(); resolve(true); });
    c.once('error', () => resolve(false));
  });
}

/**
 * Starts `turnserver` (killed by stop() or when node exits).
 * Returns {url, username, credential, port, dir, logText(), stop()}.
 */
export async function startTurn() {
  const dir = mkdtempSync(join(tmpdir(), 'fm-turn-'));
  const port = await freePort();
  // Relay ports: a random window; coturn skips ports that are taken.
  const min = 20000 + Math.floor(Math.random() * 400) * 100;
  const username = 'fm';
  const credential = `pw-${Math.random().toString(36).slice(2)}`;
  const args = [
    '-n', '--no-cli', '--no-tls', '--no-dtls', '--no-stdout-log', '--simple-log',
    '--listening-ip=127.0.0.1', '--relay-ip=127.0.0.1', `--listening-port=${port}`,
    `--min-port=${min}`, `--max-port=${min + 99}`,
    '--lt-cred-mech', `--user=${username}:${credential}`, '--realm=flowmeter.test', '--fingerprint',
    '--allow-loopback-peers', '--no-multicast-peers',
    `--log-file=${join(dir, 'turn.log')}`, `--pidfile=${join(dir, 'turn.pid')}`,
    `--userdb=${join(dir, 'turndb')}`,
  ];
  const child = spawn('turnserver', args, { stdio: ['ignore', 'ignore', 'inherit'] });
  // Killed by stop(), else when node exits (not via ctx.track: a child that
  // died of a signal has no exitCode, and lib.mjs' stopServer would wait for
  // an 'exit' that already happened).
  const killAtExit = () => child.kill('SIGKILL');
  process.once('exit', killAtExit);
  await waitFor('coturn to listen', async () => {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`turnserver exited (${child.exitCode ?? child.signalCode}); see ${dir}/turn.log`);
    }
    return tcpOpen(port);
  }, 10000);
  log(`coturn on 127.0.0.1:${port} (relay ports ${min}-${min + 99}), dir ${dir}`);
  const logText = () => {
    try {
      return readFileSync(join(dir, 'turn.log'), 'utf8');
    } catch {
      return '';
    }
  };
  return {
    url: `turn:127.0.0.1:${port}?transport=udp`,
    username,
    credential,
    port,
    dir,
    logText,
    async stop() {
      process.removeListener('exit', killAtExit);
      if (child.exitCode === null && child.signalCode === null) {
        const done = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([done, new Promise((r) => setTimeout(r, 3000))]);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
