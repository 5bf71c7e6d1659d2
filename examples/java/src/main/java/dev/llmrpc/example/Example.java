package dev.llmrpc.example;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import dev.llmrpc.v1.ChunkChoice;
import dev.llmrpc.v1.CompleteRequest;
import dev.llmrpc.v1.CompleteResponse;
import dev.llmrpc.v1.CompletionServiceGrpc;
import dev.llmrpc.v1.CompletionServiceGrpc.CompletionServiceBlockingStub;
import dev.llmrpc.v1.FunctionDefinition;
import dev.llmrpc.v1.StreamCompleteRequest;
import dev.llmrpc.v1.StreamCompleteResponse;
import dev.llmrpc.v1.StreamOptions;
import dev.llmrpc.v1.Tool;
import dev.llmrpc.v1.ToolCall;
import io.grpc.Context;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.MetadataUtils;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * Calls the llmrpc gateway from Java with stubs generated from protos/ (see build.sh).
 *
 * <pre>llmrpc-example-java [address] [model]   (defaults: localhost:50051, mock/echo; LLMRPC_TOKEN = bearer token)</pre>
 *
 * <p>A unary call with a deadline, a stream printing its deltas, a tool whose JSON Schema is parsed into a
 * google.protobuf.Struct, the google.rpc error details of an invalid request, a missing token being refused,
 * and a stream cancelled half-way. Each result is one "name: value" line on stdout.
 *
 * <p>llmrpc.v1.Message is written fully qualified ({@code dev.llmrpc.v1.Message}) because the name clashes
 * with com.google.protobuf.Message (and llmrpc.v1.File with java.io.File) in code that uses both.
 */
public final class Example {
  private Example() {}

  public static void main(String[] args) throws Exception {
    String address = args.length > 0 ? args[0] : "localhost:50051";
    String model = args.length > 1 ? args[1] : "mock/echo";
    // Plaintext for a local gateway; drop usePlaintext() (TLS) in production.
    ManagedChannel channel = ManagedChannelBuilder.forTarget(address).usePlaintext().build();
    try {
      CompletionServiceBlockingStub anonymous = CompletionServiceGrpc.newBlockingStub(channel);
      CompletionServiceBlockingStub stub = withToken(anonymous, System.getenv("LLMRPC_TOKEN"));
      unary(stub, model);
      stream(stub, model);
      toolCall(stub, model);
      errorDetails(stub, model);
      missingToken(anonymous, model);
      cancelStream(stub, model);
      unaryAs(stub, model, "after_cancel", "Still there?");
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  /** Every call of the returned stub carries the gateway's bearer token (server run with --auth-tokens). */
  static CompletionServiceBlockingStub withToken(CompletionServiceBlockingStub stub, String token) {
    if (token == null || token.isEmpty()) {
      return stub;
    }
    Metadata headers = new Metadata();
    headers.put(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer " + token);
    return stub.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
  }

  static dev.llmrpc.v1.Message user(String text) {
    return dev.llmrpc.v1.Message.newBuilder().setRole("user").setContent(text).build();
  }

  static CompleteRequest.Builder request(String model, String text) {
    return CompleteRequest.newBuilder().setModel(model).addMessages(user(text));
  }

  static CompleteResponse unaryAs(CompletionServiceBlockingStub stub, String model, String label, String text) {
    CompleteResponse resp = stub.withDeadlineAfter(10, TimeUnit.SECONDS).complete(request(model, text).build());
    System.out.println(label + ": " + resp.getChoices(0).getMessage().getContent());
    return resp;
  }

  static void unary(CompletionServiceBlockingStub stub, String model) throws InvalidProtocolBufferException {
    CompleteResponse resp = unaryAs(stub, model, "unary", "Hello from Java");
    // OpenAI field names (max_completion_tokens, tool_calls) rather than lowerCamelCase.
    JsonFormat.Printer printer = JsonFormat.printer().preservingProtoFieldNames().omittingInsignificantWhitespace();
    System.out.println("unary_json: " + printer.print(resp));
  }

  static void stream(CompletionServiceBlockingStub stub, String model) {
    StreamCompleteRequest req = StreamCompleteRequest.newBuilder()
        .setRequest(request(model, "Stream from Java"))
        .setStreamOptions(StreamOptions.newBuilder().setIncludeUsage(true))
        .build();
    StringBuilder text = new StringBuilder();
    Iterator<StreamCompleteResponse> chunks = stub.withDeadlineAfter(30, TimeUnit.SECONDS).streamComplete(req);
    while (chunks.hasNext()) {
      StreamCompleteResponse chunk = chunks.next();
      for (ChunkChoice choice : chunk.getChoicesList()) {
        if (!choice.getDelta().getContent().isEmpty()) {
          System.out.println("delta: \"" + choice.getDelta().getContent() + "\"");
          text.append(choice.getDelta().getContent());
        }
      }
      if (chunk.hasUsage()) {
        System.out.println("stream_usage: " + chunk.getUsage().getTotalTokens());
      }
    }
    System.out.println("stream: " + text);
  }

  static void toolCall(CompletionServiceBlockingStub stub, String model) throws InvalidProtocolBufferException {
    // The JSON Schema goes straight from JSON text into a Struct.Builder.
    Struct.Builder parameters = Struct.newBuilder();
    JsonFormat.parser().merge(
        "{\"type\": \"object\","
            + " \"properties\": {\"city\": {\"type\": \"string\", \"description\": \"City name\"},"
            + "                \"days\": {\"type\": \"integer\", \"minimum\": 1}},"
            + " \"required\": [\"city\"]}",
        parameters);
    Tool tool = Tool.newBuilder()
        .setType("function")
        .setFunction(FunctionDefinition.newBuilder()
            .setName("get_weather")
            .setDescription("Current weather for a city")
            .setParameters(parameters))
        .build();
    CompleteResponse resp = stub.withDeadlineAfter(10, TimeUnit.SECONDS)
        .complete(request(model, "What is the weather in Paris?").addTools(tool).build());
    dev.llmrpc.v1.Message message = resp.getChoices(0).getMessage();
    for (ToolCall call : message.getToolCallsList()) {
      System.out.println("tool_call: " + call.getFunction().getName() + " " + call.getFunction().getArguments());
    }
    if (message.getToolCallsCount() == 0) {
      System.out.println("tool_call: none (" + message.getContent() + ")");
    }
  }

  /** ErrorInfo.reason and BadRequest field names from the grpc-status-details-bin trailer. */
  static String describe(StatusRuntimeException e) throws InvalidProtocolBufferException {
    com.google.rpc.Status status = StatusProto.fromThrowable(e);
    String reason = "";
    List<String> fields = new ArrayList<>();
    for (Any detail : status == null ? List.<Any>of() : status.getDetailsList()) {
      if (detail.is(ErrorInfo.class)) {
        reason = detail.unpack(ErrorInfo.class).getReason();
      } else if (detail.is(BadRequest.class)) {
        for (BadRequest.FieldViolation violation : detail.unpack(BadRequest.class).getFieldViolationsList()) {
          fields.add(violation.getField());
        }
      }
    }
    return (e.getStatus().getCode().name() + " " + reason + " " + String.join(",", fields)).trim();
  }

  static void errorDetails(CompletionServiceBlockingStub stub, String model) throws InvalidProtocolBufferException {
    try {
      stub.withDeadlineAfter(10, TimeUnit.SECONDS).complete(request(model, "hi").setTemperature(7).build());
      System.out.println("error: none");
    } catch (StatusRuntimeException e) {
      System.out.println("error: " + describe(e));
    }
  }

  static void missingToken(CompletionServiceBlockingStub anonymous, String model)
      throws InvalidProtocolBufferException {
    try {
      anonymous.withDeadlineAfter(10, TimeUnit.SECONDS).complete(request(model, "hi").build());
      System.out.println("unauthenticated: none");
    } catch (StatusRuntimeException e) {
      System.out.println("unauthenticated: " + describe(e));
    }
  }

  /**
   * Reads two deltas of a slow stream, then cancels the Context the call was started in: the gateway drops
   * the upstream request too. mock_delay (in extra_body, built with Struct.Builder) slows the mock provider.
   */
  static void cancelStream(CompletionServiceBlockingStub stub, String model) throws Exception {
    Struct extraBody = Struct.newBuilder()
        .putFields("mock_delay", Value.newBuilder().setNumberValue(0.2).build())
        .build();
    StreamCompleteRequest req = StreamCompleteRequest.newBuilder()
        .setRequest(request(model, "Please count slowly from one to one hundred, one word at a time.")
            .setExtraBody(extraBody))
        .build();
    Context.CancellableContext context = Context.current().withCancellation();
    // A blocking call belongs to the Context that is current when it starts.
    Iterator<StreamCompleteResponse> chunks =
        context.call(() -> stub.withDeadlineAfter(60, TimeUnit.SECONDS).streamComplete(req));
    int deltas = 0;
    while (deltas < 2) {
      if (!chunks.hasNext()) {
        throw new IllegalStateException("stream ended before two deltas");
      }
      for (ChunkChoice choice : chunks.next().getChoicesList()) {
        if (!choice.getDelta().getContent().isEmpty()) {
          deltas++;
        }
      }
    }
    context.cancel(null);
    Status.Code code = Status.Code.OK;
    try {
      while (chunks.hasNext()) {
        chunks.next();
      }
    } catch (StatusRuntimeException e) {
      code = e.getStatus().getCode();
    }
    System.out.println("cancelled: after " + deltas + " deltas (" + code.name() + ")");
  }
}
