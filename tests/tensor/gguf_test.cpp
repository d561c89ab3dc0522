// GGUF reading and writing: files assembled byte by byte here (independently of GgufWriter), writer
// round trips, Q8_0 arithmetic, llama.cpp's own files from ../shared/reference, and corruption.
#include "userip/tensor/gguf.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "support/reference_dirs.h"
#include "support/temp_dir.h"
#include "userip/util/error.h"
#include "userip/util/fs.h"

namespace userip::tensor {
namespace {

using userip::testing::TempDir;

using userip::testing::expect_error;

// Little-endian GGUF bytes, written field by field.
struct Builder {
  std::string bytes;
  template <typename T>
  Builder& put(T v) {
    bytes.append(reinterpret_cast<const char*>(&v), sizeof(T));
    return *this;
  }
  Builder& u32(std::uint32_t v) { return put(v); }
  Builder& u64(std::uint64_t v) { return put(v); }
  Builder& str(const std::string& s) {
    u64(s.size());
    bytes += s;
    return *this;
  }
  Builder& header(std::uint32_t version, std::uint64_t tensors, std::uint64_t kvs) {
    bytes += "GGUF";
    return u32(version).u64(tensors).u64(kvs);
  }
  // A tensor info entry; dims fastest-first.
  Builder& tensor(const std::string& name, std::vector<std::uint64_t> dims, std::uint32_t type, std::uint64_t offset) {
    str(name).u32(static_cast<std::uint32_t>(dims.size()));
    for (auto d : dims) u64(d);
    return u32(type).u64(offset);
  }
  Builder& pad(std::size_t alignment = 32) {
    bytes.append((alignment - bytes.size() % alignment) % alignment, '\0');
    return *this;
  }
  Builder& floats(const std::vector<float>& v) {
    for (float x : v) put(x);
    return *this;
  }
};

std::unique_ptr<GgufFile> parse_gguf(const std::string& bytes) { return GgufFile::from_bytes(bytes, "corrupt.gguf"); }

using testing::reference_dir;
using testing::shared_reference_dir;

TEST(Gguf, ReadsHandAssembledVersion2File) {
  Builder b;
  b.header(2, 2, 6);
  b.str("general.architecture").u32(8).str("llama");
  b.str("llama.context_length").u32(4).u32(2048);
  b.str("x.i8").u32(1).put<std::int8_t>(-5);
  b.str("x.f64").u32(12).put<double>(0.125);
  b.str("tokens").u32(9).u32(8).u64(3).str("a").str("<s>").str("\xe2\x96\x81the");
  b.str("types").u32(9).u32(5).u64(3).put<std::int32_t>(1).put<std::int32_t>(3).put<std::int32_t>(6);
  // A 2x3 matrix (ggml dims {3, 2}) at 0 and a 4-vector at 32.
  b.tensor("m", {3, 2}, 0, 0).tensor("v", {4}, 1, 32).pad();
  const std::size_t data = b.bytes.size();
  b.floats({1, 2, 3, 4, 5, 6}).pad();
  for (float x : {0.5f, -1.0f, 2.0f, 65504.0f}) b.put<std::uint16_t>(c10::Half(x).x);

  auto f = parse_gguf(b.bytes);
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->architecture(), "llama");
  EXPECT_EQ(f->data_offset(), data);
  EXPECT_EQ(f->keys(), (std::vector<std::string>{"general.architecture", "llama.context_length", "x.i8", "x.f64",
                                                 "tokens", "types"}));
  EXPECT_EQ(f->get_u64("llama.context_length"), 2048u);
  EXPECT_EQ(f->get_i64("x.i8"), -5);
  EXPECT_FLOAT_EQ(f->get_f32("x.f64"), 0.125f);
  EXPECT_EQ(f->get_string_array("tokens"), (std::vector<std::string>{"a", "<s>", "\xe2\x96\x81the"}));
  EXPECT_EQ(f->get_i32_array("types"), (std::vector<std::int32_t>{1, 3, 6}));
  const TensorInfo* m = f->find("m");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->shape, (std::vector<std::int64_t>{3, 2}));
  EXPECT_EQ(m->torch_shape(), (std::vector<std::int64_t>{2, 3}));
  EXPECT_TRUE(torch::equal(f->load("m"), torch::tensor({1.f, 2.f, 3.f, 4.f, 5.f, 6.f}).reshape({2, 3})));
  EXPECT_TRUE(torch::equal(f->load("v"), torch::tensor({0.5f, -1.0f, 2.0f, 65504.0f})));
  EXPECT_EQ(f->find("v")->type, StoredType::f16);
}

TEST(Gguf, WriterRoundTripsMetadataOfEveryType) {
  TempDir dir;
  GgufWriter w;
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("u8", GgufValue::u8(200));
  w.set("i8", GgufValue::i8(-100));
  w.set("u16", GgufValue::u16(60000));
  w.set("i16", GgufValue::i16(-30000));
  w.set("u32", GgufValue::u32(4000000000u));
  w.set("i32", GgufValue::i32(-2000000000));
  w.set("u64", GgufValue::u64(18000000000000000000ull));
  w.set("i64", GgufValue::i64(-9000000000000000000ll));
  w.set("f32", GgufValue::f32(1.5f));
  w.set("f64", GgufValue::f64(-2.75));
  w.set("yes", GgufValue::boolean(true));
  w.set("str", GgufValue::string("héllo"));
  w.set("strs", GgufValue::string_array({"", "a b", "<0x0A>"}));
  w.set("floats", GgufValue::f32_array({0.0f, -1.5f, 3.25f}));
  w.set("ints", GgufValue::i32_array({-1, 0, 7}));
  w.set("bools", GgufValue::integer_array(GgufType::boolean, {1, 0}));
  GgufValue nested;
  nested.type = GgufType::array;
  nested.element_type = GgufType::array;
  nested.data = GgufValue::Array{GgufValue::i32_array({1, 2}), GgufValue::string_array({"x"})};
  w.set("nested", nested);
  w.set("u32", GgufValue::u32(7));  // replacing keeps the position
  const auto path = dir / "meta.gguf";
  w.write(path);

  GgufFile f(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.keys().size(), 18u);
  EXPECT_EQ(f.keys()[5], "u32");
  EXPECT_EQ(f.get_u64("u8"), 200u);
  EXPECT_EQ(f.get_i64("i8"), -100);
  EXPECT_EQ(f.get_u64("u16"), 60000u);
  EXPECT_EQ(f.get_i64("i16"), -30000);
  EXPECT_EQ(f.get_u64("u32"), 7u);
  EXPECT_EQ(f.get_i64("i32"), -2000000000);
  EXPECT_EQ(f.get_u64("u64"), 18000000000000000000ull);
  EXPECT_EQ(f.get_i64("i64"), -9000000000000000000ll);
  EXPECT_EQ(f.get_f32("f32"), 1.5f);
  EXPECT_EQ(f.get_f32("f64"), -2.75f);
  EXPECT_TRUE(f.get_bool("yes"));
  EXPECT_EQ(f.get_string("str"), "héllo");
  EXPECT_EQ(f.get_string_array("strs"), (std::vector<std::string>{"", "a b", "<0x0A>"}));
  EXPECT_EQ(f.get_f32_array("floats"), (std::vector<float>{0.0f, -1.5f, 3.25f}));
  EXPECT_EQ(f.get_i32_array("ints"), (std::vector<std::int32_t>{-1, 0, 7}));
  EXPECT_EQ(f.value("bools").element_type, GgufType::boolean);
  EXPECT_EQ(f.value("u16").type, GgufType::u16);  // width kept
  const auto& n = std::get<GgufValue::Array>(f.value("nested").data);
  ASSERT_EQ(n.size(), 2u);
  EXPECT_EQ(std::get<std::vector<std::string>>(n[1].data), std::vector<std::string>{"x"});
  EXPECT_EQ(f.value("nested").array_size(), 2u);
  EXPECT_TRUE(f.tensors().empty());
}

TEST(Gguf, GettersCheckTypesAndName) {
  GgufWriter w;
  w.set("neg", GgufValue::i32(-3));
  w.set("big", GgufValue::u64(~0ull));
  w.set("s", GgufValue::string("x"));
  w.set("wide", GgufValue::integer_array(GgufType::i64, {1, 5000000000ll}));
  TempDir dir;
  w.write(dir / "g.gguf");
  GgufFile f(dir / "g.gguf");
  const std::string file = (dir / "g.gguf").string();
  expect_error([&] { f.get_u64("neg"); }, {file, "'neg'", "non-negative"});
  expect_error([&] { f.get_i64("big"); }, {file, "'big'", "too large"});
  expect_error([&] { f.get_u64("s"); }, {file, "'s'", "string"});
  expect_error([&] { f.get_string("neg"); }, {file, "'neg'", "i32"});
  expect_error([&] { f.get_string("absent"); }, {file, "'absent'", "missing"});
  expect_error([&] { f.get_string_array("s"); }, {file, "'s'"});
  expect_error([&] { f.get_i32_array("wide"); }, {file, "'wide'", "int32"});
  EXPECT_EQ(f.get_f32("neg"), -3.0f);
  EXPECT_EQ(f.get_i64("absent", 9), 9);
  EXPECT_EQ(f.get_string("absent", "d"), "d");
  EXPECT_EQ(f.get_f32_array("wide"), (std::vector<float>{1.0f, 5e9f}));
  EXPECT_EQ(f.architecture(), "");
}

TEST(Gguf, WriterRoundTripsTensors) {
  TempDir dir;
  torch::manual_seed(3);
  auto a = torch::randn({5, 7});
  auto b = torch::randn({2, 3, 4}).to(torch::kFloat16);
  auto c = torch::randn({3, 2, 2, 2}).to(torch::kBFloat16);
  auto q = torch::randn({4, 64}) * 3;
  auto s = torch::tensor({1.0f});
  GgufWriter w;
  w.set("general.architecture", GgufValue::string("test"));
  w.add_tensor("a", a);
  w.add_tensor("b", b, StoredType::f16);
  w.add_tensor("c", c, StoredType::bf16);
  w.add_tensor("q", q, StoredType::q8_0);
  w.add_tensor("a_as_f16", a, StoredType::f16);
  w.add_tensor("lazy", {2, 32}, StoredType::f32, [] { return torch::ones({2, 32}); });
  w.add_tensor("s", s);
  w.write(dir / "t.gguf");

  GgufFile f(dir / "t.gguf");
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset() % 32, 0u);
  for (const auto& info : f.tensors()) EXPECT_EQ(info.offset % 32, 0u) << info.name;
  EXPECT_EQ(f.find("a")->shape, (std::vector<std::int64_t>{7, 5}));  // ggml order on disk
  EXPECT_TRUE(torch::equal(f.load("a"), a));
  EXPECT_TRUE(torch::equal(f.load("b", torch::kFloat16), b));
  EXPECT_TRUE(torch::equal(f.load("c", torch::kBFloat16), c));
  EXPECT_TRUE(torch::equal(f.load("a_as_f16"), a.to(torch::kFloat16).to(torch::kFloat32)));
  EXPECT_TRUE(torch::equal(f.load("lazy"), torch::ones({2, 32})));
  EXPECT_TRUE(torch::equal(f.load("s"), s));
  EXPECT_EQ(f.find("q")->type, StoredType::q8_0);
  EXPECT_EQ(f.find("q")->bytes, 4u * 2 * 34);
  auto qd = f.load("q");
  // Each value within half a quantization step of its block (plus float16 rounding of the scale).
  auto blocks = q.reshape({-1, 32});
  auto step = blocks.abs().amax(1, true) / 127;
  auto err = (qd.reshape({-1, 32}) - blocks).abs();
  EXPECT_TRUE((err <= step * 0.5 + blocks.abs() * 1e-3 + 1e-6).all().item<bool>()) << err.max();
  EXPECT_TRUE(torch::equal(f.load("q", torch::kBFloat16), qd.to(torch::kBFloat16)));
}

TEST(Gguf, CustomAlignment) {
  TempDir dir;
  GgufWriter w(64);
  w.add_tensor("x", torch::ones({3}));
  w.add_tensor("y", torch::ones({5}));
  w.write(dir / "a.gguf");
  GgufFile f(dir / "a.gguf");
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.get_u64("general.alignment"), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  EXPECT_EQ((f.find("y")->offset - f.data_offset()), 64u);
  EXPECT_TRUE(torch::equal(f.load("y"), torch::ones({5})));
}

TEST(Gguf, Q8_0MatchesTheFormatDefinition) {
  // One block: x_j = j - 16, so max |x| = 16 and d = 16/127 (stored as float16).
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j - 16);
  auto blocks = quantize_q8_0(x.data(), 32);
  ASSERT_EQ(blocks.size(), 34u);
  std::uint16_t scale_bits;
  std::memcpy(&scale_bits, blocks.data(), 2);
  const float d = static_cast<float>(c10::Half(scale_bits, c10::Half::from_bits()));
  EXPECT_EQ(scale_bits, c10::Half(16.0f / 127.0f).x);
  for (int j = 0; j < 32; ++j) {
    const auto q = static_cast<std::int8_t>(blocks[2 + j]);
    EXPECT_EQ(q, static_cast<int>(std::round((j - 16) * 127.0 / 16.0))) << j;
  }
  std::vector<float> back(32);
  dequantize_q8_0(blocks.data(), 32, back.data());
  EXPECT_EQ(back[0], d * -127);
  EXPECT_EQ(back[16], 0.0f);
  // All-zero block: scale 0, values 0.
  std::vector<float> zeros(32, 0.0f);
  auto zb = quantize_q8_0(zeros.data(), 32);
  EXPECT_TRUE(std::all_of(zb.begin(), zb.end(), [](std::uint8_t v) { return v == 0; }));
  expect_error([&] { quantize_q8_0(x.data(), 31); }, {"multiple of 32"});
  x[3] = NAN;
  expect_error([&] { quantize_q8_0(x.data(), 32); }, {"non-finite"});
}

TEST(Gguf, WriterRefusesWhatLlamaCppCannotRead) {
  GgufWriter w;
  expect_error([&] { w.add_tensor(std::string(64, 'n'), torch::ones({1})); }, {"1 to 63 bytes"});
  expect_error([&] { w.add_tensor("q", torch::ones({2, 33}), StoredType::q8_0); }, {"'q'", "multiple of 32"});
  expect_error([&] { w.add_tensor("five", torch::ones({1, 1, 1, 1, 1})); }, {"'five'", "5 dimensions"});
  w.add_tensor("x", torch::ones({1}));
  expect_error([&] { w.add_tensor("x", torch::ones({1})); }, {"'x'", "twice"});
  TempDir dir;
  GgufWriter bad;
  bad.add_tensor("inf", torch::full({32}, INFINITY), StoredType::q8_0);
  expect_error([&] { bad.write(dir / "bad.gguf"); }, {"bad.gguf", "'inf'", "non-finite"});
  EXPECT_FALSE(fs::exists(dir / "bad.gguf"));
}

TEST(Gguf, UnsupportedTypeFailsAtLoadNamingTheType) {
  Builder b;
  b.header(3, 2, 0).tensor("k", {256}, 12, 0).tensor("f", {1}, 0, 160).pad();
  b.bytes.append(144, '\0');
  b.pad().floats({4.0f});
  auto f = parse_gguf(b.bytes);
  EXPECT_EQ(f->find("k")->type, StoredType::other);
  EXPECT_EQ(f->find("k")->type_name, "Q4_K");
  expect_error([&] { f->load("k"); }, {"corrupt.gguf", "'k'", "Q4_K"});
  EXPECT_TRUE(torch::equal(f->load("f"), torch::tensor({4.0f})));
}

TEST(Gguf, CorruptFilesAreRefused) {
  expect_error([&] { parse_gguf(""); }, {"corrupt.gguf", "not a GGUF file"});
  expect_error([&] { parse_gguf("GGML\x03\0\0\0"); }, {"corrupt.gguf", "not a GGUF file", "47 47 4d 4c"});
  expect_error([&] { parse_gguf(Builder().header(1, 0, 0).bytes); }, {"corrupt.gguf", "version 1"});
  expect_error([&] { parse_gguf(Builder().header(4, 0, 0).bytes); }, {"corrupt.gguf", "version 4"});
  expect_error([&] { parse_gguf(Builder().header(0x03000000, 0, 0).bytes); }, {"corrupt.gguf", "big-endian"});
  expect_error([&] { parse_gguf(std::string("GGUF\x03\0\0\0", 8)); }, {"corrupt.gguf", "tensor count", "truncated"});
  // Absurd counts and lengths are refused before anything is allocated for them.
  expect_error([&] { parse_gguf(Builder().header(3, 0, 1ull << 60).bytes); }, {"corrupt.gguf", "metadata count"});
  expect_error([&] { parse_gguf(Builder().header(3, 1ull << 60, 0).bytes); }, {"corrupt.gguf", "tensor count"});
  expect_error([&] { parse_gguf(Builder().header(3, 0, 1).u64(1ull << 62).u64(0).u64(0).bytes); },
               {"corrupt.gguf", "string of"});
  expect_error([&] { parse_gguf(Builder().header(3, 0, 1).str("k").u32(8).u64(~0ull).bytes); },
               {"corrupt.gguf", "'k'", "string of"});
  expect_error([&] { parse_gguf(Builder().header(3, 0, 1).str("arr").u32(9).u32(8).u64(1ull << 61).bytes); },
               {"corrupt.gguf", "'arr'", "array elements"});
  expect_error([&] { parse_gguf(Builder().header(3, 0, 1).str("arr").u32(9).u32(4).u64(3).u32(1).bytes); },
               {"corrupt.gguf", "'arr'"});
  expect_error([&] { parse_gguf(Builder().header(3, 0, 1).str("k").u32(13).u32(0).bytes); },
               {"corrupt.gguf", "'k'", "unknown value type 13"});
  expect_error([&] { parse_gguf(Builder().header(3, 0, 1).str("arr").u32(9).u32(77).u64(0).bytes); },
               {"corrupt.gguf", "'arr'", "unknown value type 77"});
  {
    Builder nest;
    nest.header(3, 0, 1).str("deep").u32(9);
    for (int i = 0; i < 10; ++i) nest.u32(9).u64(1);
    nest.u32(4).u64(0);
    expect_error([&] { parse_gguf(nest.bytes); }, {"corrupt.gguf", "'deep'", "nests arrays"});
  }
  expect_error([&] { parse_gguf(Builder().header(3, 0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2).bytes); },
               {"corrupt.gguf", "'k'", "twice"});
  expect_error([&] { parse_gguf(Builder().header(3, 0, 1).str("general.alignment").u32(4).u32(24).bytes); },
               {"corrupt.gguf", "general.alignment", "power of two"});
  expect_error([&] { parse_gguf(Builder().header(3, 0, 1).str("general.alignment").u32(8).str("32").bytes); },
               {"corrupt.gguf", "general.alignment"});
  // Tensor infos.
  auto one_tensor = [](std::vector<std::uint64_t> dims, std::uint32_t type, std::uint64_t offset, std::size_t data) {
    Builder b;
    b.header(3, 1, 0).tensor("w", std::move(dims), type, offset).pad();
    b.bytes.append(data, '\0');
    return b.bytes;
  };
  EXPECT_NO_THROW(parse_gguf(one_tensor({4, 2}, 0, 0, 32)));
  expect_error([&] { parse_gguf(one_tensor({4, 2}, 0, 0, 31)); }, {"corrupt.gguf", "'w'", "past the end"});
  expect_error([&] { parse_gguf(one_tensor({4, 2}, 0, 32, 32)); }, {"corrupt.gguf", "'w'", "past the end"});
  expect_error([&] { parse_gguf(one_tensor({4, 2}, 0, 4, 64)); }, {"corrupt.gguf", "'w'", "alignment"});
  expect_error([&] { parse_gguf(one_tensor({4, 2}, 99, 0, 64)); }, {"corrupt.gguf", "'w'", "unknown ggml type 99"});
  expect_error([&] { parse_gguf(one_tensor({1, 1, 1, 1, 1}, 0, 0, 64)); }, {"corrupt.gguf", "'w'", "5 dimensions"});
  expect_error([&] { parse_gguf(one_tensor({1ull << 62, 1ull << 62}, 0, 0, 64)); }, {"corrupt.gguf", "'w'", "overflows"});
  expect_error([&] { parse_gguf(one_tensor({1ull << 30, 1ull << 20}, 0, 0, 64)); }, {"corrupt.gguf", "'w'", "past the end"});
  // No elements, but torch cannot represent the shape (found by fuzzing).
  expect_error([&] { parse_gguf(one_tensor({0, 1ull << 40, 1ull << 40}, 0, 0, 64)); }, {"corrupt.gguf", "'w'", "overflows"});
  expect_error([&] { parse_gguf(one_tensor({~0ull}, 0, 0, 64)); }, {"corrupt.gguf", "'w'", "dimension"});
  expect_error([&] { parse_gguf(one_tensor({33}, 8, 0, 64)); }, {"corrupt.gguf", "'w'", "Q8_0", "block of 32"});
  {
    Builder b;
    b.header(3, 2, 0).tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).pad();
    b.bytes.append(96, '\0');
    expect_error([&] { parse_gguf(b.bytes); }, {"corrupt.gguf", "'a'", "'b'", "overlap"});
  }
  {
    Builder b;
    b.header(3, 2, 0).tensor("a", {4}, 0, 0).tensor("a", {4}, 0, 32).pad();
    b.bytes.append(64, '\0');
    expect_error([&] { parse_gguf(b.bytes); }, {"corrupt.gguf", "'a'", "twice"});
  }
  {
    auto f = parse_gguf(one_tensor({4, 2}, 0, 0, 32));
    expect_error([&] { f->load("nope"); }, {"corrupt.gguf", "'nope'"});
  }
}

TEST(Gguf, EveryTruncationIsRefused) {
  TempDir dir;
  GgufWriter w;
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("tokenizer.ggml.tokens", GgufValue::string_array({"<unk>", "<s>", "a"}));
  w.set("tokenizer.ggml.scores", GgufValue::f32_array({0, 0, -1}));
  w.add_tensor("token_embd.weight", torch::randn({3, 32}), StoredType::q8_0);
  w.add_tensor("output_norm.weight", torch::randn({5}));
  w.write(dir / "t.gguf");
  const std::string bytes = read_file(dir / "t.gguf");
  GgufFile full(dir / "t.gguf");
  const TensorInfo* last = full.find("output_norm.weight");
  const std::size_t needed = last->offset + last->bytes;
  for (std::size_t n = 0; n < needed; ++n) {
    EXPECT_THROW(GgufFile::from_bytes(bytes.substr(0, n), "prefix"), Error) << n;
  }
  // On disk the message names the file (and the tensor that no longer fits).
  const auto cut = dir / "cut.gguf";
  dir.write("cut.gguf", bytes.substr(0, needed - 4));
  expect_error([&] { GgufFile f(cut); }, {cut.string(), "'output_norm.weight'", "past the end"});
}

TEST(Gguf, RandomCorruptionNeverCrashes) {
  GgufWriter w;
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("tokenizer.ggml.tokens", GgufValue::string_array({"<unk>", "<s>", "ab"}));
  w.set("ids", GgufValue::i32_array({1, 2, 3}));
  w.add_tensor("a", torch::randn({2, 32}), StoredType::q8_0);
  w.add_tensor("b", torch::randn({3}), StoredType::f16);
  TempDir dir;
  w.write(dir / "m.gguf");
  const std::string original = read_file(dir / "m.gguf");
  std::mt19937 rng(11);
  int parsed = 0;
  for (int iter = 0; iter < 5000; ++iter) {
    std::string bytes = original;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    try {
      auto f = GgufFile::from_bytes(bytes, "mutated");
      for (const auto& info : f->tensors()) f->load(info.name);
      ++parsed;
    } catch (const Error&) {
    }
  }
  EXPECT_GT(parsed, 0);
}

TEST(Gguf, IsGgufFile) {
  TempDir dir;
  GgufWriter().write(dir / "e.gguf");
  EXPECT_TRUE(is_gguf_file(dir / "e.gguf"));
  EXPECT_FALSE(is_gguf_file(dir.write("x.safetensors", "xxxxxxxx")));
  EXPECT_FALSE(is_gguf_file(dir / "missing"));
  GgufFile empty(dir / "e.gguf");
  EXPECT_TRUE(empty.tensors().empty());
  EXPECT_TRUE(empty.keys().empty());
}

// llama.cpp's converter output for the same random model as tiny-llama-hf.
TEST(Gguf, ReferenceLlamaMatchesItsSafetensors) {
  GgufFile g(reference_dir() + "/tiny-llama.gguf");
  auto hf = open_safetensors(reference_dir() + "/tiny-llama-hf/model.safetensors");
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.architecture(), "llama");
  EXPECT_EQ(g.get_u64("llama.context_length"), 256u);
  EXPECT_EQ(g.get_u64("llama.embedding_length"), 64u);
  EXPECT_EQ(g.get_u64("llama.attention.head_count_kv"), 2u);
  EXPECT_NEAR(g.get_f32("llama.attention.layer_norm_rms_epsilon"), 1e-5f, 1e-9f);
  EXPECT_EQ(g.get_f32("llama.rope.freq_base"), 10000.0f);
  EXPECT_EQ(g.get_string("tokenizer.ggml.model"), "llama");
  const auto tokens = g.get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 1000u);
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(tokens[3], "<0x00>");
  EXPECT_EQ(g.get_f32_array("tokenizer.ggml.scores").size(), 1000u);
  const auto types = g.get_i32_array("tokenizer.ggml.token_type");
  ASSERT_EQ(types.size(), 1000u);
  EXPECT_EQ((std::vector<std::int32_t>(types.begin(), types.begin() + 4)), (std::vector<std::int32_t>{2, 3, 3, 6}));
  EXPECT_EQ(g.get_u64("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_TRUE(g.get_bool("tokenizer.ggml.add_bos_token"));
  EXPECT_EQ(g.tensors().size(), 21u);

  EXPECT_EQ(g.find("token_embd.weight")->shape, (std::vector<std::int64_t>{64, 1000}));
  auto embd = g.load("token_embd.weight");
  EXPECT_EQ(embd.sizes(), (std::vector<std::int64_t>{1000, 64}));
  EXPECT_TRUE(torch::equal(embd, hf->load("model.embed_tokens.weight")));
  EXPECT_TRUE(torch::equal(g.load("output.weight"), hf->load("lm_head.weight")));
  EXPECT_TRUE(torch::equal(g.load("blk.1.ffn_down.weight"), hf->load("model.layers.1.mlp.down_proj.weight")));
  EXPECT_TRUE(torch::equal(g.load("blk.0.attn_v.weight"), hf->load("model.layers.0.self_attn.v_proj.weight")));
  EXPECT_TRUE(torch::equal(g.load("output_norm.weight"), hf->load("model.norm.weight")));
  // q rows are permuted by the converter and left so by this reader: same rows, other order.
  auto gq = g.load("blk.0.attn_q.weight");
  auto hq = hf->load("model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(gq.sizes(), hq.sizes());
  EXPECT_FALSE(torch::equal(gq, hq));
  EXPECT_TRUE(torch::equal(std::get<0>(gq.sum(1).sort()), std::get<0>(hq.sum(1).sort())));
  // Reading as bf16 converts the same values.
  EXPECT_TRUE(torch::equal(g.load("token_embd.weight", torch::kBFloat16), embd.to(torch::kBFloat16)));
}

TEST(Gguf, ReferenceGpt2MatchesItsSafetensors) {
  const std::string dir = shared_reference_dir();
  if (!fs::exists(dir + "/tiny-gpt2.gguf")) GTEST_SKIP() << "shared reference files absent";
  GgufFile g(dir + "/tiny-gpt2.gguf");
  auto hf = open_safetensors(dir + "/tiny-gpt2-hf/model.safetensors");
  EXPECT_EQ(g.architecture(), "gpt2");
  EXPECT_EQ(g.get_u64("gpt2.context_length"), 64u);
  const auto tokens = g.get_string_array("tokenizer.ggml.tokens");
  EXPECT_EQ(tokens.size(), 50257u);
  EXPECT_EQ(tokens[0], "!");
  const auto merges = g.get_string_array("tokenizer.ggml.merges");
  EXPECT_EQ(merges.size(), 50000u);
  EXPECT_EQ(merges[0], "\xc4\xa0 t");  // "Ġ t"
  EXPECT_EQ(g.get_i64("tokenizer.ggml.eos_token_id"), 50256);
  EXPECT_TRUE(torch::equal(g.load("token_embd.weight"), hf->load("transformer.wte.weight")));
  EXPECT_TRUE(torch::equal(g.load("position_embd.weight"), hf->load("transformer.wpe.weight")));
  // HF GPT-2 stores Conv1D weights [in, out]; the converter wrote them [out, in].
  EXPECT_TRUE(torch::equal(g.load("blk.0.attn_qkv.weight"), hf->load("transformer.h.0.attn.c_attn.weight").t()));
  EXPECT_TRUE(torch::equal(g.load("blk.1.ffn_down.bias"), hf->load("transformer.h.1.mlp.c_proj.bias")));
}

// A checkpoint written by this project reads back through both readers identically.
TEST(Gguf, SameTensorsThroughBothFormats) {
  TempDir dir;
  auto hf = open_safetensors(reference_dir() + "/tiny-llama-hf/model.safetensors");
  GgufWriter w;
  w.set("general.architecture", GgufValue::string("llama"));
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& name : hf->names()) {
    auto t = hf->load(name, torch::kBFloat16);
    tensors.push_back({name, t});
    const std::string short_name = "t" + std::to_string(tensors.size());  // GGUF names are at most 63 bytes
    w.add_tensor(short_name, t, StoredType::bf16);
  }
  w.write(dir / "m.gguf");
  write_safetensors(dir / "m.safetensors", tensors);
  GgufFile g(dir / "m.gguf");
  auto s = open_safetensors(dir / "m.safetensors");
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    auto a = g.load("t" + std::to_string(i + 1));
    auto b = s->load(tensors[i].first);
    EXPECT_TRUE(torch::equal(a, b)) << tensors[i].first;
  }
}

}  // namespace
}  // namespace userip::tensor
