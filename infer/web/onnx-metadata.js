// Read an ONNX file's metadata_props (ModelProto field 14) without a protobuf library.
//
// onnxruntime-web does not expose a model's custom metadata, so the page reads it
// from the bytes it already downloaded. Only the top level of ModelProto is walked;
// the graph and everything else is skipped by length.

const METADATA_PROPS = 14; // repeated StringStringEntryProto metadata_props = 14;
const ENTRY_KEY = 1;
const ENTRY_VALUE = 2;

class Reader {
  constructor(bytes, start = 0, end = bytes.length) {
    this.bytes = bytes;
    this.pos = start;
    this.end = end;
  }

  done() {
    return this.pos >= this.end;
  }

  varint() {
    // Values here are tags and lengths: they fit a double exactly below 2^53.
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new Error("truncated varint");
      const byte = this.bytes[this.pos++];
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      scale *= 128;
    }
    throw new Error("varint longer than 10 bytes");
  }

  skip(count) {
    if (count < 0 || this.pos + count > this.end) throw new Error("field runs past the end of the message");
    this.pos += count;
  }

  // Yields [fieldNumber, wireType, start, end] for length-delimited fields, skips the rest.
  *fields() {
    while (!this.done()) {
      const tag = this.varint();
      const field = Math.floor(tag / 8);
      const wire = tag % 8;
      if (wire === 0) this.varint();
      else if (wire === 1) this.skip(8);
      else if (wire === 5) this.skip(4);
      else if (wire === 2) {
        const length = this.varint();
        const start = this.pos;
        this.skip(length);
        yield [field, start, start + length];
      } else throw new Error(`unsupported protobuf wire type ${wire}`);
    }
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Map of metadata_props key -> value (strings) from the bytes of an .onnx file. */
export function readMetadataProps(buffer) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  const props = new Map();
  for (const [field, start, end] of new Reader(bytes).fields()) {
    if (field !== METADATA_PROPS) continue;
    let key = "";
    let value = "";
    for (const [sub, s, e] of new Reader(bytes, start, end).fields()) {
      if (sub === ENTRY_KEY) key = utf8.decode(bytes.subarray(s, e));
      else if (sub === ENTRY_VALUE) value = utf8.decode(bytes.subarray(s, e));
    }
    props.set(key, value);
  }
  return props;
}
