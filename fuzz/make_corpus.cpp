// Writes the fuzzers' seed corpus: tiny valid files that reach every part of each parser
// (all dtypes, sharding-free safetensors with metadata, GGUF v2 and v3 with every metadata type,
// custom alignment, Q8_0, an unsupported ggml type). Usage: fuzz_make_corpus OUT_DIR
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "userip/tensor/gguf.h"
#include "userip/tensor/tensor_file.h"
#include "userip/util/fs.h"

using namespace userip::tensor;
namespace fs = std::filesystem;

namespace {

void write_safetensors_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  write_safetensors(dir / "dtypes.safetensors",
                    {{"f32", torch::arange(6, torch::kFloat32).reshape({2, 3})},
                     {"f16", torch::arange(4, torch::kFloat32).to(torch::kFloat16)},
                     {"bf16", torch::arange(4, torch::kFloat32).to(torch::kBFloat16)},
                     {"f64", torch::arange(2, torch::kFloat64)},
                     {"i64", torch::arange(2, torch::kInt64)},
                     {"i32", torch::arange(2, torch::kInt32)},
                     {"i16", torch::arange(2, torch::kInt16)},
                     {"i8", torch::arange(2, torch::kInt8)},
                     {"u8", torch::arange(2, torch::kUInt8)},
                     {"bool", torch::ones({2}, torch::kBool)},
                     {"scalar", torch::tensor(1.0f)},
                     {"empty", torch::zeros({0, 2})}},
                    {{"note", "seed"}});
  write_safetensors(dir / "metadata_only.safetensors", {}, {{"a", "b"}});
  write_safetensors(dir / "one.safetensors", {{"w", torch::ones({1})}});
}

void write_gguf_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  GgufWriter w;
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("llama.context_length", GgufValue::u32(64));
  w.set("u8", GgufValue::u8(1));
  w.set("i8", GgufValue::i8(-1));
  w.set("u16", GgufValue::u16(2));
  w.set("i16", GgufValue::i16(-2));
  w.set("i32", GgufValue::i32(-3));
  w.set("u64", GgufValue::u64(4));
  w.set("i64", GgufValue::i64(-4));
  w.set("f32", GgufValue::f32(0.5f));
  w.set("f64", GgufValue::f64(0.25));
  w.set("bool", GgufValue::boolean(true));
  w.set("tokenizer.ggml.tokens", GgufValue::string_array({"<unk>", "<s>", "a"}));
  w.set("tokenizer.ggml.scores", GgufValue::f32_array({0.0f, 0.0f, -1.0f}));
  w.set("tokenizer.ggml.token_type", GgufValue::i32_array({2, 3, 1}));
  GgufValue nested;
  nested.type = GgufType::array;
  nested.element_type = GgufType::array;
  nested.data = GgufValue::Array{GgufValue::i32_array({1}), GgufValue::string_array({"x"})};
  w.set("nested", nested);
  w.add_tensor("f32", torch::arange(4, torch::kFloat32).reshape({2, 2}));
  w.add_tensor("f16", torch::arange(3, torch::kFloat32), StoredType::f16);
  w.add_tensor("bf16", torch::arange(3, torch::kFloat32), StoredType::bf16);
  w.add_tensor("q8", torch::linspace(-1, 1, 32).reshape({1, 32}), StoredType::q8_0);
  w.add_tensor("i32", torch::arange(2, torch::kInt32), StoredType::i32);
  w.write(dir / "all_types.gguf");

  // Version 2 differs from 3 only in the version field for little-endian files.
  std::string v2 = userip::read_file(dir / "all_types.gguf");
  v2[4] = 2;
  userip::write_file_atomic(dir / "v2.gguf", v2);

  GgufWriter aligned(64);
  aligned.add_tensor("a", torch::ones({3}));
  aligned.add_tensor("b", torch::ones({2, 2, 2, 2}));
  aligned.write(dir / "align64.gguf");

  GgufWriter().write(dir / "empty.gguf");

  // A Q4_K tensor (ggml type 12: 256 values in 144 bytes), which opens but does not load.
  std::string q4 = "GGUF";
  auto put = [&q4](auto v) { q4.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  put(std::uint32_t{3});
  put(std::uint64_t{1});
  put(std::uint64_t{0});
  put(std::uint64_t{1});
  q4 += "k";
  put(std::uint32_t{1});
  put(std::uint64_t{256});
  put(std::uint32_t{12});
  put(std::uint64_t{0});
  q4.append((32 - q4.size() % 32) % 32, '\0');
  q4.append(144, '\x11');
  userip::write_file_atomic(dir / "q4_k.gguf", q4);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const fs::path out = argv[1];
  write_safetensors_seeds(out / "safetensors");
  write_gguf_seeds(out / "gguf");
  return 0;
}
