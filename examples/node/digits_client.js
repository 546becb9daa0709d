// Send one digits query and its feedback to a running mesh; print the answer as one JSON line.
//
//   node examples/node/digits_client.js --target 127.0.0.1:1337 --values 0,0,5,13,9,1,0,0,...
//
// The proto is loaded at run time (no generated code). The feedback's label is
// --label when given, else the predicted digit. --tls-ca dials with TLS (--tls-cert
// and --tls-key: a client certificate, for mTLS).
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO = path.join(__dirname, "..", "..", "protos", "clipper", "v1", "clipper.proto");

const { values: args } = parseArgs({
  options: {
    target: { type: "string", default: "127.0.0.1:1337" },
    app: { type: "string", default: "digits" },
    values: { type: "string" },
    label: { type: "string" },
    context: { type: "string", default: "" },
    "timeout-s": { type: "string", default: "10" },
    "tls-ca": { type: "string" },
    "tls-cert": { type: "string" },
    "tls-key": { type: "string" },
  },
});

// Numeric tensors are raw little-endian bytes; the digits input is float32[64].
function float32Tensor(csv) {
  const numbers = csv.split(",").map(Number);
  if (numbers.some(Number.isNaN)) throw new Error(`--values: not numbers: ${csv}`);
  const raw = Buffer.alloc(4 * numbers.length);
  numbers.forEach((v, i) => raw.writeFloatLE(v, 4 * i));
  return { dtype: "float32", shape: [numbers.length], raw };
}

function int64Scalar(text) {
  const raw = Buffer.alloc(8);
  raw.writeBigInt64LE(BigInt(text));
  return { dtype: "int64", shape: [], raw };
}

// A numeric tensor's values: a scalar for shape [], else a flat list.
function decode(tensor) {
  const readers = {
    int32: [4, (b, i) => b.readInt32LE(i)],
    int64: [8, (b, i) => Number(b.readBigInt64LE(i))],
    float32: [4, (b, i) => b.readFloatLE(i)],
    float64: [8, (b, i) => b.readDoubleLE(i)],
  };
  const reader = readers[tensor.dtype];
  if (!reader) throw new Error(`output dtype ${tensor.dtype}: this example decodes only ${Object.keys(readers)}`);
  const [size, read] = reader;
  const values = [];
  for (let i = 0; i < tensor.raw.length; i += size) values.push(read(tensor.raw, i));
  return tensor.shape.length === 0 && values.length === 1 ? values[0] : values;
}

// Plaintext without a CA, else TLS trusting it (and presenting a certificate for mTLS).
function credentials() {
  if (!args["tls-ca"]) return grpc.credentials.createInsecure();
  const read = (file) => (file ? fs.readFileSync(file) : null);
  return grpc.credentials.createSsl(read(args["tls-ca"]), read(args["tls-key"]), read(args["tls-cert"]));
}

function call(client, method, request, timeoutS) {
  const deadline = new Date(Date.now() + timeoutS * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

async function main() {
  if (!args.values) throw new Error("--values is required (64 comma-separated pixel values)");
  const definition = protoLoader.loadSync(PROTO, {
    keepCase: true, // field names as in the proto: context_key, query_id
    longs: String,
    defaults: true,
  });
  const clipper = grpc.loadPackageDefinition(definition).clipper.v1;
  const client = new clipper.Frontend(args.target, credentials());
  const timeoutS = Number(args["timeout-s"]);
  try {
    const reply = await call(client, "Predict", {
      application: args.app,
      input: float32Tensor(args.values),
      context_key: args.context,
    }, timeoutS);
    const label = args.label === undefined
      ? reply.output // the predicted digit, unless told the true one
      : int64Scalar(args.label);
    const scored = await call(client, "Feedback", {
      application: args.app,
      context_key: args.context,
      query_id: reply.query_id,
      label,
    }, timeoutS);
    console.log(JSON.stringify({
      client: "node",
      query_id: reply.query_id,
      output: decode(reply.output),
      default_used: reply.default_used,
      models: reply.models,
      feedback_models: scored.models,
    }));
  } finally {
    client.close();
  }
}

main().catch((err) => {
  const code = err.code === undefined ? "" : `${grpc.status[err.code]}: `;
  console.error(`error: ${code}${err.details ?? err.message}`);
  process.exitCode = 1;
});
