// llmrpc from Node.js: unary call with a deadline, a stream printing deltas, a tool with a JSON schema,
// decoded error details, bearer auth and cancelling a stream.
//
//   npm install && node demo.mjs                     # against `make run` (localhost:50051, mock/echo)
//   LLMRPC_SERVER=host:port LLMRPC_TOKEN=... LLMRPC_MODEL=openai/gpt-4o node demo.mjs
//
// Progress goes to stderr; a JSON summary of what came back goes to stdout (the CI test reads it).
// Set LLMRPC_KEYLESS_MODEL to a model whose provider has no key configured to see PROVIDER_API_KEY_MISSING.
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { statusDecoder } from "./errors.mjs";
import { fromStruct, toStruct } from "./struct.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const PROTOS = process.env.LLMRPC_PROTOS ?? path.join(here, "..", "..", "protos");
const SERVER = process.env.LLMRPC_SERVER ?? "localhost:50051";
const MODEL = process.env.LLMRPC_MODEL ?? "mock/echo";
const TOKEN = process.env.LLMRPC_TOKEN; // the gateway's --auth-tokens, if it has any

// keepCase: OpenAI's snake_case names (finish_reason, prompt_tokens), not lowerCamelCase.
// longs: String: `created`/`seed` are int64. defaults: true, or choices[0].index === 0 comes back undefined.
// oneofs stays false: it would add a `_content: "content"` key for every proto3 `optional` field.
const definition = protoLoader.loadSync("llmrpc/v1/completion_service.proto", {
  includeDirs: [PROTOS], keepCase: true, longs: String, enums: String, defaults: true,
});
const llmrpc = grpc.loadPackageDefinition(definition).llmrpc.v1;
const client = new llmrpc.CompletionService(SERVER, grpc.credentials.createInsecure());
const decodeStatus = statusDecoder(PROTOS);
const log = (...args) => console.error(...args);

/** Bearer auth: per-call metadata (grpc-js refuses call credentials on an insecure channel). */
function auth() {
  const md = new grpc.Metadata();
  if (TOKEN) md.set("authorization", `Bearer ${TOKEN}`);
  return md;
}

const deadline = (ms) => ({ deadline: new Date(Date.now() + ms) });
const user = (content) => ({ model: MODEL, messages: [{ role: "user", content }] });

function complete(request, ms = 30_000) {
  return new Promise((resolve, reject) =>
    client.Complete(request, auth(), deadline(ms), (err, resp) => (err ? reject(err) : resolve(resp))));
}

async function unary() {
  const resp = await complete(user("Hello from Node"), 10_000); // a 10 s deadline
  const [choice] = resp.choices;
  log(`unary: ${choice.message.content} (finish_reason=${choice.finish_reason})`);
  return { id: resp.id, created: resp.created, index: choice.index, content: choice.message.content,
           finish_reason: choice.finish_reason, usage: resp.usage, cost_usd: resp.metadata?.cost_usd ?? null };
}

function stream() {
  return new Promise((resolve, reject) => {
    let text = "";
    let usage = null;
    const call = client.StreamComplete(
      { request: user("Stream to Node"), stream_options: { include_usage: true } }, auth(), deadline(30_000));
    call.on("data", (chunk) => {
      for (const choice of chunk.choices) {
        const delta = choice.delta?.content ?? "";
        text += delta;
        process.stderr.write(delta);
      }
      if (chunk.usage) usage = chunk.usage;
    });
    call.on("end", () => { log(); resolve({ text, usage }); });
    call.on("error", reject);
  });
}

const WEATHER_SCHEMA = {
  type: "object",
  properties: { city: { type: "string", description: "City name" }, unit: { type: "string", enum: ["c", "f"] } },
  required: ["city"],
};

async function toolCall() {
  const resp = await complete({
    ...user("What is the weather in Paris?"),
    // A plain object here would arrive upstream as {} (proto-loader has no Struct support): toStruct.
    tools: [{ type: "function", function: { name: "get_weather", description: "Current weather",
                                            parameters: toStruct(WEATHER_SCHEMA) } }],
  });
  const message = resp.choices[0].message;
  log(`tool call: ${message.tool_calls.length} tool call(s), content=${JSON.stringify(message.content)}`);
  return { content: message.content ?? null, tool_calls: message.tool_calls.map((c) => c.function),
           provider_specific_fields: fromStruct(message.provider_specific_fields) ?? null };
}

async function failure(request) {
  try {
    await complete(request);
    return null;
  } catch (err) {
    const status = decodeStatus(err);
    const info = status.details["google.rpc.ErrorInfo"];
    log(`error: ${grpc.status[err.code]} ${info?.reason} ${JSON.stringify(info?.metadata)}`);
    return { code: grpc.status[err.code], reason: info?.reason, domain: info?.domain, metadata: info?.metadata,
             field_violations: status.details["google.rpc.BadRequest"]?.field_violations ?? [] };
  }
}

async function deadlineExceeded() {
  // extra_body is a Struct too; mock_delay makes the mock/ provider wait before answering.
  try {
    await complete({ ...user("slow"), model: "mock/echo", extra_body: toStruct({ mock_delay: 5 }) }, 300);
    return null;
  } catch (err) {
    log(`deadline: ${grpc.status[err.code]}`);
    return grpc.status[err.code];
  }
}

function cancelStream(afterChunks = 3) {
  return new Promise((resolve) => {
    let seen = 0;
    const call = client.StreamComplete({ request: user("Count to 200 slowly") }, auth(), deadline(30_000));
    call.on("data", () => {
      seen += 1;
      if (seen === afterChunks) call.cancel(); // the gateway cancels the upstream request too
    });
    // A cancelled call ends with an error event of code CANCELLED; `end` means it finished first.
    call.on("error", (err) => { log(`cancel: ${grpc.status[err.code]} after ${seen} chunks`); resolve({ code: grpc.status[err.code], seen }); });
    call.on("end", () => resolve({ code: "OK", seen }));
  });
}

const summary = {
  unary: await unary(),
  stream: await stream(),
  tool: await toolCall(),
  bad_request: await failure({ ...user("x"), temperature: 7 }),
  key_missing: process.env.LLMRPC_KEYLESS_MODEL
    ? await failure({ ...user("x"), model: process.env.LLMRPC_KEYLESS_MODEL }) : null,
  deadline: await deadlineExceeded(),
  cancel: await cancelStream(),
};
console.log(JSON.stringify(summary));
client.close();
