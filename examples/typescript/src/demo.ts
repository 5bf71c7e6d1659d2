// llmrpc from TypeScript: the generated @llmrpc/protos (protobuf-es v2) with Connect over gRPC (HTTP/2).
// A unary call with a deadline, a stream printing deltas, a tool with a JSON schema, decoded error details,
// bearer auth and cancelling a stream.
//
//   npm install && npm run demo                       # against `make run` (localhost:50051, mock/echo)
//   LLMRPC_SERVER=host:port LLMRPC_TOKEN=... LLMRPC_MODEL=openai/gpt-4o npm run demo
//
// Progress goes to stderr; a JSON summary of what came back goes to stdout (the CI test reads it).
// Set LLMRPC_KEYLESS_MODEL to a model whose provider has no key configured to see PROVIDER_API_KEY_MISSING.
import { type JsonObject, type MessageInitShape, toJson } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { BadRequestSchema, ErrorInfoSchema } from "@llmrpc/protos/google/rpc/error_details_pb";
// llmrpc.v1.Message is generated as `Message`, which protobuf-es's own `Message` type shadows: alias it.
import type { Message as ChatMessage } from "@llmrpc/protos/llmrpc/v1/chat_pb";
import {
  type CompleteRequestSchema,
  CompleteResponseSchema,
  CompletionService,
} from "@llmrpc/protos/llmrpc/v1/completion_service_pb";

const SERVER = process.env.LLMRPC_SERVER ?? "localhost:50051";
const MODEL = process.env.LLMRPC_MODEL ?? "mock/echo";
const TOKEN = process.env.LLMRPC_TOKEN; // the gateway's --auth-tokens, if it has any
const log = (...args: unknown[]): void => console.error(...args);

/** Bearer auth on every call. */
const bearer: Interceptor = (next) => async (req) => {
  if (TOKEN) req.header.set("authorization", `Bearer ${TOKEN}`);
  return next(req);
};

const transport = createGrpcTransport({ baseUrl: `http://${SERVER}`, interceptors: [bearer] });
const client = createClient(CompletionService, transport);

type RequestInit = MessageInitShape<typeof CompleteRequestSchema>;
const user = (content: string) => ({ model: MODEL, messages: [{ role: "user", content }] });

async function unary() {
  const resp = await client.complete(user("Hello from TypeScript"), { timeoutMs: 10_000 }); // a 10 s deadline
  const choice = resp.choices[0];
  const message: ChatMessage | undefined = choice?.message;
  log(`unary: ${message?.content} (finishReason=${choice?.finishReason})`);
  // protobuf-es properties are lowerCamelCase; useProtoFieldName prints OpenAI's names (finish_reason), and
  // alwaysEmitImplicit keeps zero values such as choices[0].index that proto JSON leaves out.
  const openaiJson = toJson(CompleteResponseSchema, resp, { useProtoFieldName: true, alwaysEmitImplicit: true });
  return {
    content: message?.content ?? null,
    index: choice?.index,
    created: resp.created, // int64 with jstype = JS_STRING: a string, so JSON.stringify works
    stringified: JSON.parse(JSON.stringify(resp)).id === resp.id,
    openai_json: openaiJson as JsonObject,
  };
}

async function stream() {
  let text = "";
  let usage: JsonObject | null = null;
  const chunks = client.streamComplete(
    { request: user("Stream to TypeScript"), streamOptions: { includeUsage: true } }, { timeoutMs: 30_000 });
  for await (const chunk of chunks) {
    for (const choice of chunk.choices) {
      const delta = choice.delta?.content ?? "";
      text += delta;
      process.stderr.write(delta);
    }
    if (chunk.usage) usage = { prompt_tokens: chunk.usage.promptTokens, total_tokens: chunk.usage.totalTokens };
  }
  log();
  return { text, usage };
}

const WEATHER_SCHEMA: JsonObject = {
  type: "object",
  properties: { city: { type: "string", description: "City name" }, unit: { type: "string", enum: ["c", "f"] } },
  required: ["city"],
};

async function toolCall() {
  const resp = await client.complete({
    ...user("What is the weather in Paris?"),
    // google.protobuf.Struct is a plain JsonObject in protobuf-es: pass the schema as is.
    tools: [{ type: "function", function: { name: "get_weather", description: "Current weather",
                                            parameters: WEATHER_SCHEMA } }],
  }, { timeoutMs: 30_000 });
  const message = resp.choices[0]?.message;
  log(`tool call: ${message?.toolCalls.length} tool call(s)`);
  return {
    tool_calls: message?.toolCalls.map((c) => ({ name: c.function?.name, arguments: c.function?.arguments })),
    provider_specific_fields: message?.providerSpecificFields ?? null,
  };
}

async function failure(request: RequestInit) {
  try {
    await client.complete(request, { timeoutMs: 30_000 });
    return null;
  } catch (e) {
    const err = ConnectError.from(e);
    // Connect decodes the grpc-status-details-bin trailer; findDetails picks a type out of it.
    const [info] = err.findDetails(ErrorInfoSchema);
    const [bad] = err.findDetails(BadRequestSchema);
    log(`error: ${Code[err.code]} ${info?.reason} ${JSON.stringify(info?.metadata)}`);
    return { code: Code[err.code], reason: info?.reason, domain: info?.domain, metadata: info?.metadata,
             field_violations: bad?.fieldViolations.map((v) => v.field) ?? [] };
  }
}

async function deadlineExceeded() {
  // extra_body is a Struct too; mock_delay makes the mock/ provider wait before answering.
  const request: RequestInit = { ...user("slow"), model: "mock/echo", extraBody: { mock_delay: 5 } };
  try {
    await client.complete(request, { timeoutMs: 300 });
    return null;
  } catch (e) {
    const code = Code[ConnectError.from(e).code];
    log(`deadline: ${code}`);
    return code;
  }
}

async function cancelStream(afterChunks = 3) {
  const abort = new AbortController();
  let seen = 0;
  try {
    for await (const _chunk of client.streamComplete({ request: user("Count to 200 slowly") },
                                                     { signal: abort.signal, timeoutMs: 30_000 })) {
      seen += 1;
      if (seen === afterChunks) abort.abort(); // the gateway cancels the upstream request too
    }
    return { code: "OK", seen };
  } catch (e) {
    const code = Code[ConnectError.from(e).code];
    log(`cancel: ${code} after ${seen} chunks`);
    return { code, seen };
  }
}

const keyless = process.env.LLMRPC_KEYLESS_MODEL;
const summary = {
  unary: await unary(),
  stream: await stream(),
  tool: await toolCall(),
  bad_request: await failure({ ...user("x"), temperature: 7 }),
  key_missing: keyless ? await failure({ ...user("x"), model: keyless }) : null,
  deadline: await deadlineExceeded(),
  cancel: await cancelStream(),
};
console.log(JSON.stringify(summary));
