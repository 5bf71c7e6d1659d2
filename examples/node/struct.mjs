// google.protobuf.Struct <-> plain JSON for @grpc/proto-loader.
//
// proto-loader has no Struct wrapper: a plain object such as a tool's JSON schema is encoded as an
// EMPTY Struct, silently ({"parameters": {}} upstream). Every Struct field of llmrpc.v1 needs these:
// FunctionDefinition.parameters, JsonSchema.schema, CompleteRequest.metadata and extra_body on the way
// in, provider_specific_fields on the way out.
// protobufjs uses its own built-in definition of google/protobuf/struct.proto, whose field names are
// lowerCamelCase (numberValue, structValue, ...) even with keepCase: true; snake_case keys are dropped.

/** A JSON value as a google.protobuf.Value message object. */
export function toValue(value) {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (typeof value === "object") return { structValue: toStruct(value) };
  throw new TypeError(`not a JSON value: ${typeof value}`);
}

/** A plain JSON object as a google.protobuf.Struct message object. */
export function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}

/** A google.protobuf.Value message object (as proto-loader decodes it) back to JSON. */
export function fromValue(value) {
  if (value == null) return null;
  if ("structValue" in value && value.structValue != null) return fromStruct(value.structValue);
  if ("listValue" in value && value.listValue != null) return (value.listValue.values ?? []).map(fromValue);
  if ("stringValue" in value && value.stringValue != null) return value.stringValue;
  if ("numberValue" in value && value.numberValue != null) return value.numberValue;
  if ("boolValue" in value && value.boolValue != null) return value.boolValue;
  return null;
}

/** A google.protobuf.Struct message object back to a plain JSON object (undefined stays undefined). */
export function fromStruct(struct) {
  if (struct == null) return undefined;
  return Object.fromEntries(Object.entries(struct.fields ?? {}).map(([k, v]) => [k, fromValue(v)]));
}
