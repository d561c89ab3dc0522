// safetensors reading and writing: round trips, the byte layout the format prescribes (checked
// against files assembled by hand here, not by the writer), sharding, and every corruption the
// reader must refuse with a message naming the file and tensor.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>

#include "support/reference_dirs.h"
#include "support/temp_dir.h"
#include "userip/tensor/tensor_file.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"

namespace userip::tensor {
namespace {

using userip::testing::TempDir;

using userip::testing::expect_error;

// A safetensors file assembled from its parts: 8-byte length, header text, data.
std::string raw_file(const std::string& header, const std::string& data, std::uint64_t length_override = 0) {
  std::uint64_t length = length_override ? length_override : header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &length, 8);
  return out + header + data;
}

std::string floats_bytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

std::unique_ptr<SafetensorsSource> parse_safetensors(const std::string& bytes) {
  return SafetensorsSource::from_bytes(bytes, "corrupt.safetensors");
}

using testing::reference_dir;
using testing::shared_reference_dir;

TEST(Safetensors, ReadsHandAssembledFile) {
  // Two tensors laid out by hand, header deliberately not padded (the data starts unaligned).
  const std::string header = R"({"b":{"dtype":"F32","shape":[3],"data_offsets":[8,20]},)"
                             R"("a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":"v"}})";
  std::int32_t ints[2] = {7, -9};
  std::string data(reinterpret_cast<const char*>(ints), 8);
  data += floats_bytes({1.5f, -2.25f, 3.0f});
  auto source = parse_safetensors(raw_file(header, data));
  ASSERT_EQ(source->tensors().size(), 2u);
  EXPECT_EQ(source->metadata().at("k"), "v");
  auto b = source->load("b");
  EXPECT_TRUE(torch::equal(b, torch::tensor({1.5f, -2.25f, 3.0f})));
  auto a = source->load("a", torch::kInt32);
  EXPECT_TRUE(torch::equal(a, torch::tensor({7, -9}, torch::kInt32)));
  const TensorInfo* info = source->find("b");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->offset, 8 + header.size() + 8);
  EXPECT_EQ(info->bytes, 12u);
  EXPECT_EQ(info->type, StoredType::f32);
  EXPECT_FALSE(info->fastest_dim_first);
}

TEST(Safetensors, RoundTripsEveryDtypeWithMetadata) {
  TempDir dir;
  torch::manual_seed(1);
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"f32", torch::randn({3, 5})},
      {"f16", torch::randn({4, 2}).to(torch::kFloat16)},
      {"bf16", torch::randn({2, 3, 4}).to(torch::kBFloat16)},
      {"f64", torch::randn({7}, torch::kFloat64)},
      {"i64", torch::arange(-5, 5, torch::kInt64)},
      {"i32", torch::arange(0, 6, torch::kInt32).reshape({2, 3})},
      {"i16", torch::arange(-3, 3, torch::kInt16)},
      {"i8", torch::arange(-128, 127, 7, torch::kInt8)},
      {"u8", torch::arange(0, 255, 11, torch::kUInt8)},
      {"scalar", torch::tensor(2.5f)},
      {"empty", torch::zeros({0, 3})},
  };
  const auto path = dir / "m.safetensors";
  write_safetensors(path, tensors, {{"purpose", "test"}});

  auto source = open_safetensors(path);
  std::vector<std::string> expected_names;
  for (const auto& [name, t] : tensors) expected_names.push_back(name);
  EXPECT_EQ(source->names(), expected_names);
  for (const auto& [name, t] : tensors) {
    auto loaded = source->load(name, t.scalar_type());
    EXPECT_EQ(loaded.sizes(), t.sizes()) << name;
    EXPECT_TRUE(torch::equal(loaded, t)) << name;
  }
  auto& st = dynamic_cast<SafetensorsSource&>(*source);
  EXPECT_EQ(st.metadata().at("purpose"), "test");
  EXPECT_EQ(st.metadata().at("format"), "pt");  // transformers needs it
  // Conversions on load.
  EXPECT_TRUE(torch::equal(source->load("f16", torch::kFloat32), tensors[1].second.to(torch::kFloat32)));
  EXPECT_TRUE(torch::equal(source->load("bf16", torch::kFloat32), tensors[2].second.to(torch::kFloat32)));
  EXPECT_TRUE(torch::equal(source->load("f32", torch::kBFloat16), tensors[0].second.to(torch::kBFloat16)));
  EXPECT_EQ(source->find("bf16")->type, StoredType::bf16);
  EXPECT_EQ(source->find("bf16")->type_name, "BF16");
}

TEST(Safetensors, WriterFollowsTheByteLayout) {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  auto t = torch::tensor({1.0f, 2.0f, 3.0f});
  write_safetensors(path, {{"x", t}});
  const std::string bytes = read_file(path);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);  // data section 8-byte aligned
  ASSERT_EQ(bytes.size(), 8 + n + 12);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  EXPECT_NE(header.find(R"("x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]})"), std::string::npos) << header;
  EXPECT_EQ(bytes.substr(8 + n), floats_bytes({1.0f, 2.0f, 3.0f}));
  EXPECT_FALSE(fs::exists(dir / "m.safetensors.tmp"));
}

TEST(Safetensors, LoadedTensorsOwnTheirMemory) {
  TempDir dir;
  const auto path = dir / "m.safetensors";
  auto original = torch::arange(0, 64, torch::kFloat32);
  write_safetensors(path, {{"x", original}, {"h", original.to(torch::kBFloat16)}});
  torch::Tensor same_dtype, bf16;
  {
    auto source = open_safetensors(path);
    same_dtype = source->load("x", torch::kFloat32);
    bf16 = source->load("h", torch::kBFloat16);
  }  // mapping gone
  // Writing would fault if these aliased the read-only mapping.
  same_dtype.add_(1);
  bf16.add_(1);
  EXPECT_TRUE(torch::equal(same_dtype, original + 1));
  EXPECT_TRUE(torch::equal(bf16.to(torch::kFloat32), original + 1));
  EXPECT_TRUE(torch::equal(open_safetensors(path)->load("x"), original));
}

TEST(Safetensors, StreamingWriterProducesOneTensorAtATime) {
  TempDir dir;
  std::vector<TensorSpec> specs = {
      {"a", torch::kBFloat16, {4, 8}}, {"b", torch::kFloat16, {3}}, {"c", torch::kFloat32, {2, 2}}};
  std::vector<std::string> calls;
  write_safetensors(dir / "s.safetensors", specs, [&](const TensorSpec& spec) {
    calls.push_back(spec.name);
    // Produced in f32; the writer converts to the spec's dtype.
    return torch::full(spec.shape, static_cast<float>(calls.size()));
  });
  EXPECT_EQ(calls, (std::vector<std::string>{"a", "b", "c"}));
  auto source = open_safetensors(dir / "s.safetensors");
  EXPECT_EQ(source->find("a")->type, StoredType::bf16);
  EXPECT_TRUE(torch::equal(source->load("c"), torch::full({2, 2}, 3.0f)));
  // A producer returning the wrong shape is refused and leaves no file.
  expect_error(
      [&] { write_safetensors(dir / "bad.safetensors", specs, [](const TensorSpec&) { return torch::zeros({1}); }); },
      {"bad.safetensors", "'a'", "shape"});
  EXPECT_FALSE(fs::exists(dir / "bad.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "bad.safetensors.tmp"));
}

TEST(Safetensors, ShardedWriteAndRead) {
  TempDir dir;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (int i = 0; i < 5; ++i)
    tensors.push_back({"layer." + std::to_string(i), torch::full({16, 16}, float(i))});  // 1 KiB each
  const auto out = dir / "ckpt";
  auto files = write_safetensors_sharded(out, tensors, 2048);
  ASSERT_EQ(files.size(), 4u);  // 3 shards + index
  EXPECT_EQ(files[0].filename(), "model-00001-of-00003.safetensors");
  EXPECT_EQ(files[2].filename(), "model-00003-of-00003.safetensors");
  EXPECT_EQ(files[3].filename(), "model.safetensors.index.json");

  auto source = open_safetensors(out);  // the directory
  auto& st = dynamic_cast<SafetensorsSource&>(*source);
  EXPECT_EQ(st.files().size(), 3u);
  EXPECT_EQ(st.metadata().at("total_size"), std::to_string(5 * 1024));
  for (const auto& [name, t] : tensors) EXPECT_TRUE(torch::equal(source->load(name), t)) << name;
  EXPECT_EQ(source->find("layer.4")->file.filename(), "model-00003-of-00003.safetensors");

  // Saving again as one file removes the stale shards and index.
  write_safetensors_sharded(out, tensors, 1 << 20);
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
  EXPECT_FALSE(fs::exists(out / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(out / "model-00001-of-00003.safetensors"));
  EXPECT_EQ(dynamic_cast<SafetensorsSource&>(*open_safetensors(out)).files().size(), 1u);

  // A tensor larger than the limit gets a shard of its own.
  files = write_safetensors_sharded(out, {{"big", torch::zeros({1024})}, {"small", torch::zeros({2})}}, 100);
  EXPECT_EQ(files.size(), 3u);
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
}

TEST(Safetensors, DirectoryResolution) {
  TempDir dir;
  write_safetensors(dir / "adapter.safetensors", {{"x", torch::ones({2})}});
  EXPECT_TRUE(open_safetensors(dir.path())->has("x"));
  write_safetensors(dir / "other.safetensors", {{"y", torch::ones({2})}});
  expect_error([&] { open_safetensors(dir.path()); }, {dir.path().string(), "2 .safetensors files"});
  write_safetensors(dir / "model.safetensors", {{"z", torch::ones({2})}});
  EXPECT_TRUE(open_safetensors(dir.path())->has("z"));
  expect_error([&] { open_safetensors(dir / "missing.safetensors"); }, {"missing.safetensors"});
}

TEST(Safetensors, IndexErrors) {
  TempDir dir;
  write_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", torch::ones({2})}});
  dir.write(
      "model.safetensors.index.json",
      R"({"metadata":{"total_size":16},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
  expect_error([&] { open_safetensors(dir.path()); },
               {"model.safetensors.index.json", "model-00002-of-00002.safetensors", "'b'"});

  dir.write("model.safetensors.index.json",
            R"({"weight_map":{"a":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}})");
  expect_error([&] { open_safetensors(dir.path()); }, {"index.json", "'c'", "does not contain"});

  dir.write("model.safetensors.index.json", R"({"weight_map":{"a":"../model-00001-of-00002.safetensors"}})");
  expect_error([&] { open_safetensors(dir.path()); }, {"index.json", "not a plain file name"});

  dir.write("model.safetensors.index.json", R"({"weight_map":{"a":1}})");
  expect_error([&] { open_safetensors(dir.path()); }, {"index.json", "'a'"});

  dir.write("model.safetensors.index.json", R"({"weight_map": )");
  expect_error([&] { open_safetensors(dir.path()); }, {"index.json", "not valid JSON"});

  // The same tensor in two shards.
  write_safetensors(dir / "model-00002-of-00002.safetensors", {{"a", torch::ones({2})}});
  dir.write("model.safetensors.index.json",
            R"({"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
  expect_error([&] { open_safetensors(dir.path()); }, {"model-00002-of-00002.safetensors", "'a'", "also in"});
}

TEST(Safetensors, CorruptHeadersAreRefused) {
  const std::string one = floats_bytes({1.0f});
  auto entry = [](const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}";
  };
  // Too short, length past the end, absurd length.
  expect_error([&] { parse_safetensors(""); }, {"corrupt.safetensors", "too short"});
  expect_error([&] { parse_safetensors(std::string(5, '\0')); }, {"corrupt.safetensors", "too short"});
  expect_error([&] { parse_safetensors(raw_file("{}", "", 1000)); }, {"corrupt.safetensors", "header length 1000", "past the end"});
  expect_error([&] { parse_safetensors(raw_file("{}", "", ~0ull)); }, {"corrupt.safetensors", "past the end"});
  // Not JSON / not an object / not UTF-8 / duplicate keys.
  expect_error([&] { parse_safetensors(raw_file("GGUF", "")); }, {"corrupt.safetensors", "does not start with"});
  expect_error([&] { parse_safetensors(raw_file("{\"a\":", "")); }, {"corrupt.safetensors", "not valid JSON"});
  expect_error([&] { parse_safetensors(raw_file("{\"a\xff\":1}", "")); }, {"corrupt.safetensors", "UTF-8"});
  expect_error(
      [&] {
        parse_safetensors(raw_file("{" + entry("w", "F32", "[1]", "[0,4]") + "," + entry("w", "F32", "[1]", "[0,4]") + "}", one));
      },
      {"corrupt.safetensors", "'w' twice"});
  // Entries that lie about their data.
  expect_error([&] { parse_safetensors(raw_file("{" + entry("w", "F32", "[1]", "[0,8]") + "}", one)); },
               {"corrupt.safetensors", "'w'", "past the end"});
  expect_error([&] { parse_safetensors(raw_file("{" + entry("w", "F32", "[1]", "[4,0]") + "}", one)); },
               {"corrupt.safetensors", "'w'", "end before"});
  expect_error([&] { parse_safetensors(raw_file("{" + entry("w", "F16", "[1]", "[0,4]") + "}", one)); },
               {"corrupt.safetensors", "'w'", "needs 2 bytes", "span 4"});
  expect_error([&] { parse_safetensors(raw_file("{" + entry("w", "F32", "[2]", "[0,4]") + "}", one)); },
               {"corrupt.safetensors", "'w'", "needs 8 bytes"});
  expect_error([&] { parse_safetensors(raw_file("{" + entry("w", "F32", "[-1]", "[0,4]") + "}", one)); },
               {"corrupt.safetensors", "'w'", "shape"});
  expect_error([&] { parse_safetensors(raw_file("{" + entry("w", "F32", "[1.5]", "[0,4]") + "}", one)); },
               {"corrupt.safetensors", "'w'", "shape"});
  expect_error(
      [&] {
        parse_safetensors(raw_file("{" + entry("w", "F32", "[4611686018427387904,4611686018427387904]", "[0,4]") + "}", one));
      },
      {"corrupt.safetensors", "'w'", "too large"});
  expect_error([&] { parse_safetensors(raw_file("{" + entry("w", "F32", "[0,4611686018427387904,4]", "[0,0]") + "}", "")); },
               {"corrupt.safetensors", "'w'", "too large"});
  expect_error([&] { parse_safetensors(raw_file("{" + entry("w", "F7", "[1]", "[0,4]") + "}", one)); },
               {"corrupt.safetensors", "'w'", "unknown dtype 'F7'"});
  expect_error([&] { parse_safetensors(raw_file(R"({"w":{"dtype":"F32","shape":[1]}})", one)); },
               {"corrupt.safetensors", "'w'", "data_offsets"});
  expect_error([&] { parse_safetensors(raw_file(R"({"w":[1,2]})", one)); }, {"corrupt.safetensors", "'w'", "not a JSON object"});
  expect_error([&] { parse_safetensors(raw_file(R"({"__metadata__":{"a":1}})", "")); },
               {"corrupt.safetensors", "__metadata__", "'a'"});
  // Overlap, holes and trailing bytes.
  const std::string two = floats_bytes({1.0f, 2.0f});
  expect_error(
      [&] {
        parse_safetensors(raw_file("{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "F32", "[1]", "[4,8]") + "}", two));
      },
      {"corrupt.safetensors", "'a'", "'b'", "overlap"});
  expect_error([&] { parse_safetensors(raw_file("{" + entry("b", "F32", "[1]", "[4,8]") + "}", two)); },
               {"corrupt.safetensors", "'b'", "belong to no tensor"});
  expect_error([&] { parse_safetensors(raw_file("{" + entry("a", "F32", "[1]", "[0,4]") + "}", two)); },
               {"corrupt.safetensors", "4 bytes after"});
}

TEST(Safetensors, UnsupportedDtypeFailsOnlyAtLoad) {
  auto source =
      parse_safetensors(raw_file(R"({"mask":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", std::string("\x01\x00", 2)));
  EXPECT_EQ(source->find("mask")->type, StoredType::other);
  expect_error([&] { source->load("mask"); }, {"corrupt.safetensors", "'mask'", "BOOL"});
  expect_error([&] { source->load("nope"); }, {"corrupt.safetensors", "'nope'"});
}

TEST(Safetensors, TruncatedFileOnDiskNamesFileAndTensor) {
  TempDir dir;
  const auto path = dir / "t.safetensors";
  write_safetensors(path, {{"first", torch::ones({8})}, {"last", torch::ones({8})}});
  std::string bytes = read_file(path);
  dir.write("t.safetensors", bytes.substr(0, bytes.size() - 5));
  expect_error([&] { open_safetensors(path); }, {path.string(), "'last'", "past the end"});
  // Every prefix of a valid file is refused cleanly.
  for (std::size_t n = 0; n + 1 < bytes.size(); ++n) {
    EXPECT_THROW(SafetensorsSource::from_bytes(bytes.substr(0, n), "prefix"), Error) << n;
  }
}

TEST(Safetensors, RandomCorruptionNeverCrashes) {
  TempDir dir;
  write_safetensors(dir / "m.safetensors", {{"a", torch::randn({3, 4})}, {"b", torch::randn({5}).to(torch::kFloat16)}});
  const std::string original = read_file(dir / "m.safetensors");
  std::mt19937 rng(7);
  int parsed = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bytes = original;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    try {
      auto source = SafetensorsSource::from_bytes(bytes, "mutated");
      for (const auto& info : source->tensors()) source->load(info.name);
      ++parsed;
    } catch (const Error&) {
    }
  }
  EXPECT_GT(parsed, 0);  // flips inside the data section still parse
}

TEST(Safetensors, ReferenceLlamaCheckpoint) {
  const std::string path = reference_dir() + "/tiny-llama-hf/model.safetensors";
  auto source = open_safetensors(path);
  EXPECT_EQ(source->tensors().size(), 21u);  // embed + 2 x 9 + norm + lm_head
  const TensorInfo* embed = source->find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->shape, (std::vector<std::int64_t>{1000, 64}));
  EXPECT_EQ(source->find("model.layers.0.self_attn.k_proj.weight")->shape, (std::vector<std::int64_t>{32, 64}));  // GQA
  auto weights = source->load("model.embed_tokens.weight");
  EXPECT_EQ(weights.sizes(), (std::vector<std::int64_t>{1000, 64}));
  EXPECT_TRUE(torch::isfinite(weights).all().item<bool>());
}

TEST(Safetensors, ReferenceGpt2Checkpoint) {
  std::string path = reference_dir() + "/tiny-gpt2-hf/model.safetensors";
  if (!fs::exists(path)) path = shared_reference_dir() + "/tiny-gpt2-hf/model.safetensors";
  if (!fs::exists(path)) GTEST_SKIP() << "reference files absent";
  auto source = open_safetensors(path);
  EXPECT_EQ(source->find("transformer.wte.weight")->shape, (std::vector<std::int64_t>{50257, 32}));
  EXPECT_EQ(source->find("transformer.h.0.attn.c_attn.weight")->shape,
            (std::vector<std::int64_t>{32, 96}));  // Conv1D [in, out]
  EXPECT_EQ(source->load("transformer.wpe.weight").sizes(), (std::vector<std::int64_t>{64, 32}));
}

}  // namespace
}  // namespace userip::tensor
