// The ingest cluster benchmark's peer: one tus 1.0 server (@tus/server) whose uploads live
// in an S3 bucket (@tus/s3-store). Several of these on one bucket make the multi-node setup
// a tus user would run. Run by bench/ingest/cluster.py; see bench/ingest/README.md.
//
//   node server.mjs --port P --endpoint http://127.0.0.1:9000 --bucket NAME
//                   [--host 127.0.0.1] [--path /files] [--part-size-mib 8]
//
// Each option may also come from the environment: TUS_PORT, TUS_HOST, TUS_PATH,
// TUS_S3_ENDPOINT, TUS_S3_BUCKET, TUS_PART_SIZE_MIB; the keys from AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY (moto accepts any). Uploads stage their parts under TMPDIR.

import http from 'node:http';
import process from 'node:process';
import { parseArgs } from 'node:util';

import { S3Store } from '@tus/s3-store';
import { Server } from '@tus/server';

const MIB = 1024 * 1024;
// S3 refuses parts under 5 MiB (all but the last). 8 MiB is the store's own default: a
// 4 KiB upload is one (last) part, a 1 GiB upload 128 parts, far below the 10,000 limit.
const DEFAULT_PART_SIZE_MIB = 8;

function fail(message) {
  process.stderr.write(`server.mjs: ${message}\n`);
  process.exit(2);
}

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.TUS_PORT },
    host: { type: 'string', default: process.env.TUS_HOST ?? '127.0.0.1' },
    path: { type: 'string', default: process.env.TUS_PATH ?? '/files' },
    endpoint: { type: 'string', default: process.env.TUS_S3_ENDPOINT },
    bucket: { type: 'string', default: process.env.TUS_S3_BUCKET },
    'part-size-mib': {
      type: 'string',
      default: process.env.TUS_PART_SIZE_MIB ?? String(DEFAULT_PART_SIZE_MIB),
    },
  },
  strict: true,
});

const port = Number(values.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  fail(`--port must be a port number, found ${values.port}`);
}
if (!values.endpoint) fail('--endpoint (or TUS_S3_ENDPOINT) is required');
if (!values.bucket || values.bucket.length < 3) {
  fail(`--bucket needs 3 or more characters, found ${values.bucket ?? 'none'}`);
}
const partSizeMib = Number(values['part-size-mib']);
if (!Number.isInteger(partSizeMib) || partSizeMib < 5 || partSizeMib > 5 * 1024) {
  fail(`--part-size-mib must be an integer from 5 to 5120, found ${values['part-size-mib']}`);
}

const datastore = new S3Store({
  partSize: partSizeMib * MIB,
  s3ClientConfig: {
    bucket: values.bucket,
    endpoint: values.endpoint,
    region: process.env.AWS_REGION ?? 'us-east-1',
    // moto serves one host name for every bucket: the bucket goes in the path.
    forcePathStyle: true,
    credentials: {
      accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? 'bench',
      secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? 'bench',
    },
  },
});

// The default locker: a lock held in this process's memory, so an upload is locked only
// against requests to the same instance (what a user of two instances gets).
const tus = new Server({
  path: values.path,
  datastore,
  // A relative Location lets the client resume an upload on any instance.
  relativeLocation: true,
});

const httpServer = http.createServer((req, res) => tus.handle(req, res));
httpServer.listen(port, values.host, () => {
  const { address, port: bound } = httpServer.address();
  process.stdout.write(
    `listening ${address}:${bound} path=${values.path} endpoint=${values.endpoint} ` +
      `bucket=${values.bucket} part_size=${partSizeMib} MiB\n`,
  );
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    httpServer.close(() => process.exit(0));
    // Open keep-alive connections would hold close() forever.
    httpServer.closeAllConnections();
  });
}
