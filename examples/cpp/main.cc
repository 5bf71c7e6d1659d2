// Calls the llmrpc gateway from C++ with stubs generated from protos/ (see Makefile).
//
//   llmrpc-example-cpp [address] [model]   (defaults: localhost:50051, mock/echo; LLMRPC_TOKEN = bearer token)
//
// A unary call with a deadline, a stream printing its deltas, a tool whose JSON Schema is parsed into a
// google.protobuf.Struct, the google.rpc error details of an invalid request, a missing token being refused,
// and a stream cancelled half-way. Each result is one "name: value" line on stdout.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "google/rpc/code.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "llmrpc/v1/completion_service.grpc.pb.h"

namespace v1 = llmrpc::v1;
using Stub = v1::CompletionService::Stub;

namespace {

std::string token() {
  const char* value = std::getenv("LLMRPC_TOKEN");
  return value ? value : "";
}

// A context for one call: a deadline, and the gateway's bearer token (server run with --auth-tokens).
void prepare(grpc::ClientContext& ctx, std::chrono::seconds deadline, bool with_token = true) {
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  if (with_token && !token().empty()) ctx.AddMetadata("authorization", "Bearer " + token());
}

// The canonical name of a gRPC code ("INVALID_ARGUMENT"), from google/rpc/code.proto.
std::string code_name(const grpc::Status& status) {
  return google::rpc::Code_Name(static_cast<google::rpc::Code>(status.error_code()));
}

void fail(const std::string& what, const grpc::Status& status) {
  std::cerr << what << ": " << code_name(status) << " " << status.error_message() << "\n";
  std::exit(1);
}

// Parses JSON into a message (a Struct here), the protobuf util way.
template <typename M>
void from_json(const std::string& json, M* message) {
  auto parsed = google::protobuf::util::JsonStringToMessage(json, message);
  if (!parsed.ok()) {
    std::cerr << "bad JSON: " << parsed.ToString() << "\n";
    std::exit(1);
  }
}

v1::CompleteRequest request(const std::string& model, const std::string& text) {
  v1::CompleteRequest req;
  req.set_model(model);
  v1::Message* message = req.add_messages();
  message->set_role("user");
  message->set_content(text);
  return req;
}

v1::CompleteResponse unary_as(Stub& stub, const std::string& model, const std::string& label,
                              const std::string& text) {
  grpc::ClientContext ctx;
  prepare(ctx, std::chrono::seconds(10));
  v1::CompleteResponse resp;
  grpc::Status status = stub.Complete(&ctx, request(model, text), &resp);
  if (!status.ok()) fail(label, status);
  std::cout << label << ": " << resp.choices(0).message().content() << "\n";
  return resp;
}

void unary(Stub& stub, const std::string& model) {
  v1::CompleteResponse resp = unary_as(stub, model, "unary", "Hello from C++");
  // OpenAI field names (max_completion_tokens, tool_calls) rather than lowerCamelCase.
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(resp, &json, options);
  std::cout << "unary_json: " << json << "\n";
}

void stream(Stub& stub, const std::string& model) {
  grpc::ClientContext ctx;
  prepare(ctx, std::chrono::seconds(30));
  v1::StreamCompleteRequest req;
  *req.mutable_request() = request(model, "Stream from C++");
  req.mutable_stream_options()->set_include_usage(true);
  auto reader = stub.StreamComplete(&ctx, req);
  v1::StreamCompleteResponse chunk;
  std::string text;
  while (reader->Read(&chunk)) {
    for (const auto& choice : chunk.choices()) {
      if (!choice.delta().content().empty()) {
        std::cout << "delta: \"" << choice.delta().content() << "\"\n";
        text += choice.delta().content();
      }
    }
    if (chunk.has_usage()) std::cout << "stream_usage: " << chunk.usage().total_tokens() << "\n";
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) fail("stream", status);
  std::cout << "stream: " << text << "\n";
}

void tool_call(Stub& stub, const std::string& model) {
  v1::CompleteRequest req = request(model, "What is the weather in Paris?");
  v1::Tool* tool = req.add_tools();
  tool->set_type("function");
  v1::FunctionDefinition* function = tool->mutable_function();
  function->set_name("get_weather");
  function->set_description("Current weather for a city");
  // The JSON Schema goes straight from JSON text into the google.protobuf.Struct field.
  from_json(R"({"type": "object",
                "properties": {"city": {"type": "string", "description": "City name"},
                               "days": {"type": "integer", "minimum": 1}},
                "required": ["city"]})",
            function->mutable_parameters());
  grpc::ClientContext ctx;
  prepare(ctx, std::chrono::seconds(10));
  v1::CompleteResponse resp;
  grpc::Status status = stub.Complete(&ctx, req, &resp);
  if (!status.ok()) fail("tool call", status);
  const v1::Message& message = resp.choices(0).message();
  for (const auto& call : message.tool_calls()) {
    std::cout << "tool_call: " << call.function().name() << " " << call.function().arguments() << "\n";
  }
  if (message.tool_calls().empty()) std::cout << "tool_call: none (" << message.content() << ")\n";
}

// The grpc-status-details-bin trailer is a serialized google.rpc.Status: ErrorInfo + BadRequest here.
void error_details(Stub& stub, const std::string& model) {
  v1::CompleteRequest req = request(model, "hi");
  req.set_temperature(7);
  grpc::ClientContext ctx;
  prepare(ctx, std::chrono::seconds(10));
  v1::CompleteResponse resp;
  grpc::Status status = stub.Complete(&ctx, req, &resp);
  google::rpc::Status details;
  details.ParseFromString(status.error_details());
  std::string reason, fields;
  for (const auto& any : details.details()) {
    google::rpc::ErrorInfo info;
    google::rpc::BadRequest bad;
    if (any.UnpackTo(&info)) reason = info.reason();
    if (any.UnpackTo(&bad)) {
      for (const auto& violation : bad.field_violations()) fields += (fields.empty() ? "" : ",") + violation.field();
    }
  }
  std::cout << "error: " << code_name(status) << " " << reason << " " << fields << "\n";
}

void missing_token(Stub& stub, const std::string& model) {
  grpc::ClientContext ctx;
  prepare(ctx, std::chrono::seconds(10), /*with_token=*/false);
  v1::CompleteResponse resp;
  grpc::Status status = stub.Complete(&ctx, request(model, "hi"), &resp);
  google::rpc::Status details;
  details.ParseFromString(status.error_details());
  std::string reason;
  for (const auto& any : details.details()) {
    google::rpc::ErrorInfo info;
    if (any.UnpackTo(&info)) reason = info.reason();
  }
  std::cout << "unauthenticated: " << code_name(status) << " " << reason << "\n";
}

// Reads two deltas of a slow stream, then TryCancel(): the gateway drops the upstream request too.
// mock_delay (in extra_body) slows the offline mock provider down.
void cancel_stream(Stub& stub, const std::string& model) {
  v1::StreamCompleteRequest req;
  *req.mutable_request() = request(model, "Please count slowly from one to one hundred, one word at a time.");
  from_json(R"({"mock_delay": 0.2})", req.mutable_request()->mutable_extra_body());
  grpc::ClientContext ctx;
  prepare(ctx, std::chrono::seconds(60));
  auto reader = stub.StreamComplete(&ctx, req);
  v1::StreamCompleteResponse chunk;
  int deltas = 0;
  while (deltas < 2) {
    if (!reader->Read(&chunk)) fail("cancel: stream ended before two deltas", reader->Finish());
    for (const auto& choice : chunk.choices()) {
      if (!choice.delta().content().empty()) ++deltas;
    }
  }
  ctx.TryCancel();
  while (reader->Read(&chunk)) {
  }
  grpc::Status status = reader->Finish();
  std::cout << "cancelled: after " << deltas << " deltas (" << code_name(status) << ")\n";
}

}  // namespace

int main(int argc, char** argv) {
  const std::string address = argc > 1 ? argv[1] : "localhost:50051";
  const std::string model = argc > 2 ? argv[2] : "mock/echo";
  // Plaintext for a local gateway; use grpc::SslCredentials(...) in production.
  auto stub = v1::CompletionService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  unary(*stub, model);
  stream(*stub, model);
  tool_call(*stub, model);
  error_details(*stub, model);
  missing_token(*stub, model);
  cancel_stream(*stub, model);
  unary_as(*stub, model, "after_cancel", "Still there?");
  return 0;
}
