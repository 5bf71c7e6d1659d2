// Command example calls the llmrpc gateway from Go with the generated package in gen/go.
//
//	example [address] [model]      (defaults: localhost:50051, mock/echo; LLMRPC_TOKEN = bearer token)
//
// It makes a unary call with a deadline, streams a reply printing its deltas, declares a tool whose
// JSON Schema is built with structpb, decodes the google.rpc error details of an invalid request,
// shows a missing token being refused, and cancels a stream half-way. Each result is one
// "name: value" line on stdout.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	llmrpcv1 "github.com/llmrpc/llmrpc/gen/go/llmrpc/v1"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// openAIJSON prints messages with OpenAI's field names (max_completion_tokens, tool_calls).
var openAIJSON = protojson.MarshalOptions{UseProtoNames: true}

func main() {
	address, model := arg(1, "localhost:50051"), arg(2, "mock/echo")
	// Plaintext for a local gateway; use grpc.WithTransportCredentials(credentials.NewTLS(...)) in production.
	conn, err := grpc.Dial(address, grpc.WithInsecure())
	if err != nil {
		log.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	client := llmrpcv1.NewCompletionServiceClient(conn)

	// Every call carries the gateway's bearer token (server started with --auth-tokens).
	ctx := context.Background()
	if token := os.Getenv("LLMRPC_TOKEN"); token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}

	unary(ctx, client, model)
	stream(ctx, client, model)
	toolCall(ctx, client, model)
	errorDetails(ctx, client, model)
	missingToken(client, model)
	cancelStream(ctx, client, model)
	unaryAs(ctx, client, model, "after_cancel", "Still there?")
}

// codeName is the canonical name of a gRPC code ("INVALID_ARGUMENT"), as the other languages print it.
func codeName(c codes.Code) string {
	return code.Code(c).String()
}

func arg(i int, fallback string) string {
	if len(os.Args) > i {
		return os.Args[i]
	}
	return fallback
}

func userMessage(text string) *llmrpcv1.Message {
	return &llmrpcv1.Message{Role: "user", Content: proto.String(text)}
}

func unary(ctx context.Context, client llmrpcv1.CompletionServiceClient, model string) {
	resp := unaryAs(ctx, client, model, "unary", "Hello from Go")
	out, err := openAIJSON.Marshal(resp)
	if err != nil {
		log.Fatalf("json: %v", err)
	}
	fmt.Printf("unary_json: %s\n", out)
}

// unaryAs runs one Complete call bounded by a 10 s deadline and prints its text under `label`.
func unaryAs(ctx context.Context, client llmrpcv1.CompletionServiceClient, model, label, text string,
) *llmrpcv1.CompleteResponse {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := client.Complete(ctx, &llmrpcv1.CompleteRequest{
		Model: model, Messages: []*llmrpcv1.Message{userMessage(text)},
	})
	if err != nil {
		log.Fatalf("%s: %v", label, err)
	}
	fmt.Printf("%s: %s\n", label, resp.GetChoices()[0].GetMessage().GetContent())
	return resp
}

func stream(ctx context.Context, client llmrpcv1.CompletionServiceClient, model string) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	chunks, err := client.StreamComplete(ctx, &llmrpcv1.StreamCompleteRequest{
		Request:       &llmrpcv1.CompleteRequest{Model: model, Messages: []*llmrpcv1.Message{userMessage("Stream from Go")}},
		StreamOptions: &llmrpcv1.StreamOptions{IncludeUsage: proto.Bool(true)},
	})
	if err != nil {
		log.Fatalf("stream: %v", err)
	}
	var text strings.Builder
	for {
		chunk, err := chunks.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatalf("stream: %v", err)
		}
		for _, choice := range chunk.GetChoices() {
			if delta := choice.GetDelta().GetContent(); delta != "" {
				fmt.Printf("delta: %q\n", delta)
				text.WriteString(delta)
			}
		}
		if usage := chunk.GetUsage(); usage != nil {
			fmt.Printf("stream_usage: %d\n", usage.GetTotalTokens())
		}
	}
	fmt.Printf("stream: %s\n", text.String())
}

func toolCall(ctx context.Context, client llmrpcv1.CompletionServiceClient, model string) {
	// structpb.NewStruct turns plain Go maps into the google.protobuf.Struct the contract carries.
	params, err := structpb.NewStruct(map[string]interface{}{
		"type": "object",
		"properties": map[string]interface{}{
			"city": map[string]interface{}{"type": "string", "description": "City name"},
			"days": map[string]interface{}{"type": "integer", "minimum": 1},
		},
		"required": []interface{}{"city"},
	})
	if err != nil {
		log.Fatalf("schema: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := client.Complete(ctx, &llmrpcv1.CompleteRequest{
		Model:    model,
		Messages: []*llmrpcv1.Message{userMessage("What is the weather in Paris?")},
		Tools: []*llmrpcv1.Tool{{Type: "function", Function: &llmrpcv1.FunctionDefinition{
			Name: "get_weather", Description: proto.String("Current weather for a city"), Parameters: params,
		}}},
	})
	if err != nil {
		log.Fatalf("tool call: %v", err)
	}
	message := resp.GetChoices()[0].GetMessage()
	for _, call := range message.GetToolCalls() {
		fmt.Printf("tool_call: %s %s\n", call.GetFunction().GetName(), call.GetFunction().GetArguments())
	}
	if len(message.GetToolCalls()) == 0 {
		fmt.Printf("tool_call: none (%s)\n", message.GetContent())
	}
}

// errorDetails sends an out-of-range temperature and decodes the grpc-status-details-bin trailer.
func errorDetails(ctx context.Context, client llmrpcv1.CompletionServiceClient, model string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := client.Complete(ctx, &llmrpcv1.CompleteRequest{
		Model: model, Messages: []*llmrpcv1.Message{userMessage("hi")}, Temperature: proto.Float64(7),
	})
	st, _ := status.FromError(err)
	reason, fields := "", []string{}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			reason = d.GetReason()
		case *errdetails.BadRequest:
			for _, violation := range d.GetFieldViolations() {
				fields = append(fields, violation.GetField())
			}
		}
	}
	fmt.Printf("error: %s %s %s\n", codeName(st.Code()), reason, strings.Join(fields, ","))
}

// missingToken calls without the bearer token; a gateway run with --auth-tokens refuses it.
func missingToken(client llmrpcv1.CompletionServiceClient, model string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := client.Complete(ctx, &llmrpcv1.CompleteRequest{Model: model, Messages: []*llmrpcv1.Message{userMessage("hi")}})
	st, _ := status.FromError(err)
	reason := ""
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			reason = info.GetReason()
		}
	}
	fmt.Printf("unauthenticated: %s %s\n", codeName(st.Code()), reason)
}

// cancelStream reads two deltas of a slow stream, then cancels its context: the gateway drops the
// upstream request too. mock_delay (in extra_body) slows the offline mock provider down.
func cancelStream(ctx context.Context, client llmrpcv1.CompletionServiceClient, model string) {
	extra, err := structpb.NewStruct(map[string]interface{}{"mock_delay": 0.2})
	if err != nil {
		log.Fatalf("extra_body: %v", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	chunks, err := client.StreamComplete(ctx, &llmrpcv1.StreamCompleteRequest{Request: &llmrpcv1.CompleteRequest{
		Model: model, ExtraBody: extra,
		Messages: []*llmrpcv1.Message{userMessage("Please count slowly from one to one hundred, one word at a time.")},
	}})
	if err != nil {
		log.Fatalf("cancel: %v", err)
	}
	deltas := 0
	for deltas < 2 {
		chunk, err := chunks.Recv()
		if err != nil {
			log.Fatalf("cancel: stream ended before two deltas: %v", err)
		}
		for _, choice := range chunk.GetChoices() {
			if choice.GetDelta().GetContent() != "" {
				deltas++
			}
		}
	}
	cancel()
	_, err = chunks.Recv()
	fmt.Printf("cancelled: after %d deltas (%s)\n", deltas, codeName(status.Code(err)))
}
