#pragma once
// One table per options struct: each option is declared once, with its JSON key, its command-line
// flag, its meaning and its range, and that one declaration drives the JSON written and read (saved
// options, fingerprints, configuration files), the range checks, the command-line flags
// (tools/userip/option_flags.h) and the option tables in docs/ (`userip options --update-docs`).
//
//   OptionTable<FitOptions> t("fit");
//   t.add("rounds", &FitOptions::rounds, "EM rounds").range(1, 1000);
//   t.add("max_batch_tokens", &FitOptions::max_batch_tokens, "Tokens per batch").flag("batch-tokens");
//
// Keys are the names users write in JSON; the flag is the key with dashes unless the table says
// otherwise (older flag spellings stay accepted as aliases). Messages name the option as the user
// wrote it: the key for JSON, the flag for the command line.
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "userip/util/enum_names.h"
#include "userip/util/error.h"

namespace userip {

// How an option is named in a message: as its JSON key or as its command-line flag.
enum class Spelling { key, flag };

// How read() treats a key that is absent: a configuration file keeps the value it started from;
// a file the project saved itself must hold every key without a stated meaning for its absence.
enum class Absent { keep, required };

namespace option_detail {

// "[1, 1000]", "(0, 10]", ">= 0", "> 0": a bound pair as docs and messages print it.
std::string range_text(std::optional<double> lo, bool lo_open, std::optional<double> hi, bool hi_open);
// The JSON value of command-line text for an option of `kind` ("integer", "number", "string",
// "boolean"); userip::Error saying what the text is not.
nlohmann::json parse_text(const std::string& text, const std::string& kind);
// A value as a person reads it in --help and docs: strings unquoted, null as "unset".
std::string show(const nlohmann::json& value);

template <typename T>
struct Codec;

template <>
struct Codec<bool> {
  static std::string kind() { return "boolean"; }
  static void read(const nlohmann::json& j, bool& v) {
    USERIP_CHECK(j.is_boolean(), "must be true or false, got {}", j.dump());
    v = j.get<bool>();
  }
};

template <typename T>
struct IntegerCodec {
  static std::string kind() { return "integer"; }
  static void read(const nlohmann::json& j, T& v) {
    USERIP_CHECK(j.is_number_integer(), "must be an integer, got {}", j.dump());
    if (j.is_number_unsigned()) {
      const auto u = j.get<std::uint64_t>();
      USERIP_CHECK(u <= static_cast<std::uint64_t>(std::numeric_limits<T>::max()), "is out of range: {}", j.dump());
      v = static_cast<T>(u);
      return;
    }
    const auto s = j.get<std::int64_t>();
    if constexpr (std::is_signed_v<T>) {
      USERIP_CHECK(s >= static_cast<std::int64_t>(std::numeric_limits<T>::min()) &&
                       s <= static_cast<std::int64_t>(std::numeric_limits<T>::max()),
                   "is out of range: {}", j.dump());
    } else {
      USERIP_CHECK(s >= 0, "must not be negative, got {}", j.dump());
    }
    v = static_cast<T>(s);
  }
};
template <> struct Codec<int> : IntegerCodec<int> {};
template <> struct Codec<long> : IntegerCodec<long> {};
template <> struct Codec<long long> : IntegerCodec<long long> {};
template <> struct Codec<unsigned long> : IntegerCodec<unsigned long> {};
template <> struct Codec<unsigned long long> : IntegerCodec<unsigned long long> {};

template <>
struct Codec<double> {
  static std::string kind() { return "number"; }
  static void read(const nlohmann::json& j, double& v) {
    USERIP_CHECK(j.is_number(), "must be a number, got {}", j.dump());
    v = j.get<double>();
  }
};

template <>
struct Codec<std::string> {
  static std::string kind() { return "string"; }
  static void read(const nlohmann::json& j, std::string& v) {
    USERIP_CHECK(j.is_string(), "must be a string, got {}", j.dump());
    v = j.get<std::string>();
  }
};

template <>
struct Codec<std::vector<std::string>> {
  static std::string kind() { return "list of strings"; }
  static void read(const nlohmann::json& j, std::vector<std::string>& v) {
    USERIP_CHECK(j.is_array(), "must be a list of strings, got {}", j.dump());
    std::vector<std::string> out;
    for (const auto& e : j) {
      USERIP_CHECK(e.is_string(), "must be a list of strings, got {}", j.dump());
      out.push_back(e.get<std::string>());
    }
    v = std::move(out);
  }
};

template <typename T>
struct ListCodec {
  static std::string kind() { return Codec<T>::kind() == "integer" ? "list of integers" : "list of numbers"; }
  static void read(const nlohmann::json& j, std::vector<T>& v) {
    USERIP_CHECK(j.is_array(), "must be a {}, got {}", kind(), j.dump());
    std::vector<T> out;
    for (const auto& e : j) {
      out.emplace_back();
      Codec<T>::read(e, out.back());
    }
    v = std::move(out);
  }
};
template <> struct Codec<std::vector<std::int64_t>> : ListCodec<std::int64_t> {};
template <> struct Codec<std::vector<double>> : ListCodec<double> {};

template <>
struct Codec<std::map<std::string, std::int64_t>> {
  static std::string kind() { return "object of integers"; }
  static void read(const nlohmann::json& j, std::map<std::string, std::int64_t>& v) {
    USERIP_CHECK(j.is_object(), "must be an object of integers, got {}", j.dump());
    std::map<std::string, std::int64_t> out;
    for (auto it = j.begin(); it != j.end(); ++it) {
      USERIP_CHECK(it->is_number_integer(), "must be an object of integers, got {}", j.dump());
      out[it.key()] = it->get<std::int64_t>();
    }
    v = std::move(out);
  }
};

// An optional value: null (or absent from a configuration) leaves it unset.
template <typename T>
struct Codec<std::optional<T>> {
  static std::string kind() { return Codec<T>::kind() + " or null"; }
  static void read(const nlohmann::json& j, std::optional<T>& v) {
    if (j.is_null()) {
      v.reset();
      return;
    }
    T value{};
    Codec<T>::read(j, value);
    v = std::move(value);
  }
};

template <typename T>
struct IsOptional : std::false_type {};
template <typename T>
struct IsOptional<std::optional<T>> : std::true_type {};

template <typename T>
nlohmann::json to_json(const T& v) {
  if constexpr (IsOptional<T>::value) {
    return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
  } else {
    return nlohmann::json(v);
  }
}

}  // namespace option_detail

template <typename Options>
class OptionTable {
 public:
  struct Field {
    std::string key;
    std::string help;
    std::string kind;  // "integer", "number", "string", "boolean", "one of: a, b", ...
    // Command-line spellings without the dashes; the first is the one shown. Empty: no flag.
    std::vector<std::string> flags;
    std::function<nlohmann::json(const Options&)> get;
    // What to_json writes, where it is not the value (a rule resolved from several members); unset: get.
    std::function<nlohmann::json(const Options&)> write;
    // Userip::Error says what is wrong with the value, without naming the option.
    std::function<void(Options&, const nlohmann::json&)> set;
    std::optional<double> lo, hi;
    bool lo_open = false, hi_open = false;
    // to_json writes the key only where this holds, so that files saved before the option existed
    // keep their fingerprints.
    std::function<bool(const Options&)> written;
    // What a missing key means when reading a saved file (Absent::required); unset: it must be there.
    std::optional<nlohmann::json> if_absent;
    // The default as docs and --help state it, where it is not a fixed value ("from the LM").
    std::string default_note;
    // A setting of the run (checkpoint interval, say), never written: it does not shape the result.
    bool runtime_only = false;

    // The flag shown (replacing the one made from the key).
    Field& flag(std::string name) {
      if (flags.empty()) flags.push_back(std::move(name));
      else flags.front() = std::move(name);
      return *this;
    }
    Field& alias(std::string name) {
      flags.push_back(std::move(name));
      return *this;
    }
    Field& no_flag() {
      flags.clear();
      return *this;
    }
    Field& range(double low, double high) {
      lo = low;
      hi = high;
      return *this;
    }
    Field& above(double low) {  // open below
      lo = low;
      lo_open = true;
      return *this;
    }
    Field& at_least(double low) {
      lo = low;
      return *this;
    }
    Field& at_most(double high) {
      hi = high;
      return *this;
    }
    Field& open_below() {
      lo_open = true;
      return *this;
    }
    Field& open_above() {
      hi_open = true;
      return *this;
    }
    Field& written_when(std::function<bool(const Options&)> predicate) {
      written = std::move(predicate);
      return *this;
    }
    Field& default_is(std::string note) {
      default_note = std::move(note);
      return *this;
    }
    Field& not_saved() {
      runtime_only = true;
      return *this;
    }
    Field& absent_means(nlohmann::json value) {
      if_absent = std::move(value);
      return *this;
    }
    // Replaces how the value is written (for a value derived from several members).
    Field& write_as(std::function<nlohmann::json(const Options&)> writer) {
      write = std::move(writer);
      return *this;
    }
    // `"key"` or `--flag` (the key when the option has no flag).
    std::string name(Spelling spelling) const {
      return spelling == Spelling::flag && !flags.empty() ? "--" + flags.front() : "\"" + key + "\"";
    }
    std::string range_text() const { return option_detail::range_text(lo, lo_open, hi, hi_open); }
    // "must be in [1, 1000], got 0" when the value is outside the range; nothing otherwise.
    std::optional<std::string> problem(const Options& o) const {
      if (!lo && !hi) return std::nullopt;
      const nlohmann::json v = get(o);
      if (!v.is_number()) return std::nullopt;  // an unset optional
      const double x = v.get<double>();
      const bool low_ok = !lo || (lo_open ? x > *lo : x >= *lo);
      const bool high_ok = !hi || (hi_open ? x < *hi : x <= *hi);
      if (low_ok && high_ok) return std::nullopt;
      if (lo && hi) return "must be in " + range_text() + ", got " + v.dump();
      return "must be " + range_text() + ", got " + v.dump();
    }
  };

  // `flags_by_default`: whether an option gets a command-line flag (its key with dashes) unless its
  // declaration says otherwise. Configuration-file tables expose only the flags they name.
  explicit OptionTable(std::string name, bool flags_by_default = true)
      : name_(std::move(name)), flags_by_default_(flags_by_default) {}

  const std::string& name() const { return name_; }
  const std::vector<Field>& fields() const { return fields_; }

  const Field& field(const std::string& key) const {
    for (const auto& f : fields_)
      if (f.key == key) return f;
    fail("option table '{}' has no option '{}'", name_, key);
  }
  std::string name_of(const std::string& key, Spelling spelling) const { return field(key).name(spelling); }

  // An option held by a member of type T, or reached through `access` (T& (Options&)) for a member
  // of a member.
  template <typename T>
  Field& add(std::string key, T Options::*member, std::string help) {
    return add<T>(std::move(key), [member](Options& o) -> T& { return o.*member; }, std::move(help));
  }
  template <typename T, typename Access>
  Field& add(std::string key, Access access, std::string help) {
    Field f = make_field(std::move(key), std::move(help), Codec<T>::kind());
    f.get = [access](const Options& o) { return option_detail::to_json(access(const_cast<Options&>(o))); };
    f.set = [access](Options& o, const nlohmann::json& j) { Codec<T>::read(j, access(o)); };
    return push(std::move(f));
  }
  // An enum option, written and read by the names of `names`.
  template <typename Enum, std::size_t N>
  Field& add_enum(std::string key, Enum Options::*member, const EnumName<Enum> (&names)[N], std::string what,
                  std::string help) {
    Field f = make_field(std::move(key), std::move(help), "one of: " + enum_name_list(names));
    f.get = [member, &names](const Options& o) { return nlohmann::json(enum_name(names, o.*member)); };
    f.set = [member, &names, what](Options& o, const nlohmann::json& j) {
      USERIP_CHECK(j.is_string(), "must be a string, got {}", j.dump());
      o.*member = enum_from_name(names, j.get<std::string>(), what);
    };
    return push(std::move(f));
  }

  // A list of enum values, written and read as a list of names.
  template <typename Enum, std::size_t N>
  Field& add_enum_list(std::string key, std::vector<Enum> Options::*member, const EnumName<Enum> (&names)[N],
                       std::string what, std::string help) {
    Field f = make_field(std::move(key), std::move(help), "list of: " + enum_name_list(names));
    f.get = [member, &names](const Options& o) {
      auto list = nlohmann::json::array();
      for (Enum v : o.*member) list.push_back(enum_name(names, v));
      return list;
    };
    f.set = [member, &names, what](Options& o, const nlohmann::json& j) {
      std::vector<std::string> list;
      option_detail::Codec<std::vector<std::string>>::read(j, list);
      std::vector<Enum> values;
      for (const auto& name : list) values.push_back(enum_from_name(names, name, what));
      o.*member = std::move(values);
    };
    return push(std::move(f));
  }

  nlohmann::json to_json(const Options& o) const {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& f : fields_)
      if (!f.runtime_only && (!f.written || f.written(o))) j[f.key] = f.write ? f.write(o) : f.get(o);
    return j;
  }

  // Reads the keys of `j` into `o`, then checks every range. Errors name `source` and the key; a
  // key the table does not have is an error listing those it has.
  void read(const nlohmann::json& j, Options& o, const std::string& source, Absent absent) const {
    USERIP_CHECK(j.is_object(), "{}: expected a JSON object of {} options, got {}", source, name_, j.type_name());
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!has(it.key())) fail("{}: unknown key \"{}\" (expected one of: {})", source, it.key(), key_list());
    }
    Options read = o;  // `o` stays as it was when the JSON is bad
    for (const auto& f : fields_) {
      auto it = j.find(f.key);
      if (it == j.end()) {
        if (absent == Absent::keep || f.runtime_only) continue;
        USERIP_CHECK(f.if_absent.has_value(), "{}: the {} options lack \"{}\"", source, name_, f.key);
        set_value(f, read, *f.if_absent, source, Spelling::key);
        continue;
      }
      set_value(f, read, *it, source, Spelling::key);
    }
    check(read, Spelling::key, source);
    o = std::move(read);
  }

  // The first value outside its range is an error naming the option as `spelling` says.
  void check(const Options& o, Spelling spelling, const std::string& source = "") const {
    for (const auto& f : fields_)
      if (auto why = f.problem(o)) fail("{}{} {}", source.empty() ? "" : source + ": ", f.name(spelling), *why);
  }

  // Sets one option from its JSON value; errors name it as `spelling` says.
  void set_value(const Field& f, Options& o, const nlohmann::json& value, const std::string& source,
                 Spelling spelling) const {
    try {
      f.set(o, value);
    } catch (const Error& e) {
      // "\"rounds\" must be an integer", but "\"kind\": unknown model 'x' (expected one of: ...)".
      const std::string why = e.what();
      const bool predicate = why.rfind("must ", 0) == 0 || why.rfind("is ", 0) == 0;
      fail("{}{}{} {}", source.empty() ? "" : source + ": ", f.name(spelling), predicate ? "" : ":", why);
    }
  }

  // The table as docs/ shows it: key, flag, type, default (of `defaults`), range, meaning.
  std::string markdown(const Options& defaults = Options()) const {
    std::string out = "| key | flag | type | default | range | meaning |\n|---|---|---|---|---|---|\n";
    for (const auto& f : fields_) {
      std::string flags;
      for (const auto& s : f.flags) flags += (flags.empty() ? "" : ", ") + ("`--" + s + "`");
      const std::string shown = f.default_note.empty() ? option_detail::show(f.get(defaults)) : f.default_note;
      out += "| `" + f.key + "` | " + flags + " | " + f.kind + " | " + shown + " | " +
             f.range_text() + " | " + cell(f.help) + " |\n";
    }
    return out;
  }

  bool has(const std::string& key) const {
    for (const auto& f : fields_)
      if (f.key == key) return true;
    return false;
  }

 private:
  template <typename T>
  using Codec = option_detail::Codec<T>;

  Field make_field(std::string key, std::string help, std::string kind) const {
    Field f;
    if (flags_by_default_) {
      std::string flag = key;
      for (auto& c : flag)
        if (c == '_') c = '-';
      f.flags.push_back(flag);
    }
    f.key = std::move(key);
    f.help = std::move(help);
    f.kind = std::move(kind);
    return f;
  }
  Field& push(Field f) {
    USERIP_CHECK(!has(f.key), "option table '{}' declares '{}' twice", name_, f.key);
    fields_.push_back(std::move(f));
    return fields_.back();
  }
  static std::string cell(const std::string& text) {
    std::string out;
    for (char c : text) out += c == '|' ? std::string("\\|") : std::string(1, c);
    return out;
  }
  std::string key_list() const {
    std::string out;
    for (const auto& f : fields_) out += (out.empty() ? "" : ", ") + f.key;
    return out;
  }

  std::string name_;
  bool flags_by_default_;
  std::vector<Field> fields_;
};

}  // namespace userip
