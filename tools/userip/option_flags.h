#pragma once
// The command-line flags of an option table (util/option_table.h): each option with a flag becomes
// a CLI11 option whose help, type and default come from the table. A given flag is read by the
// table's own reader and checked at once against its range, the error naming the flag.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "userip/util/option_table.h"

namespace userip::cli {

// "Codes per attribute (K) [1, 1024]": the help text with the range, as --help shows it.
template <typename Options>
std::string option_help(const typename OptionTable<Options>::Field& f) {
  std::string help = f.help;
  if (f.kind.rfind("one of", 0) == 0 || f.kind.rfind("list of:", 0) == 0) help += "; " + f.kind;
  const std::string range = f.range_text();
  return range.empty() ? help : help + "; range " + range;
}

// Adds the flags of `table` to `cmd`, each setting its option in `target` (whose values now are the
// defaults --help shows). `given`, when set, collects the values given by key, for a command whose
// defaults depend on what was not given.
template <typename Options>
void add_option_flags(CLI::App* cmd, const OptionTable<Options>& table, Options& target,
                      nlohmann::json* given = nullptr) {
  const Options shown = target;
  for (const auto& field : table.fields()) {
    if (field.flags.empty()) continue;
    std::string names;
    for (const auto& flag : field.flags) names += (names.empty() ? "--" : ",--") + flag;
    const auto* f = &field;  // the tables are static: they outlive the app
    const bool repeatable = field.kind == "object of integers" || field.kind.rfind("list of", 0) == 0;
    auto values = std::make_shared<nlohmann::json>(nlohmann::json::object());  // a repeated flag's so far
    auto apply = [f, &table, &target, given, values](const std::string& text) {
      nlohmann::json value;
      Options probe = target;
      try {
        if (f->kind == "object of integers") {  // NAME=K, repeatable: merged into one object
          const auto eq = text.find('=');
          USERIP_CHECK(eq != std::string::npos && eq > 0, "expects NAME=K, got '{}'", text);
          value = values->contains(f->key) ? (*values)[f->key] : nlohmann::json::object();
          value[text.substr(0, eq)] = option_detail::parse_text(text.substr(eq + 1), "integer");
        } else if (f->kind.rfind("list of", 0) == 0) {  // repeatable or comma-separated
          value = values->contains(f->key) ? (*values)[f->key] : nlohmann::json::array();
          if (f->kind == "list of numbers" || f->kind == "list of integers") {
            value.push_back(option_detail::parse_text(text, f->kind == "list of numbers" ? "number" : "integer"));
          } else {
            value.push_back(text);
          }
        } else if (f->kind == "boolean" && text.empty()) {
          value = true;  // the bare flag
        } else {
          value = option_detail::parse_text(text, f->kind);
        }
        table.set_value(*f, probe, value, "", Spelling::flag);
      } catch (const Error& e) {
        throw CLI::ValidationError(e.what());
      }
      if (auto why = f->problem(probe)) throw CLI::ValidationError(f->name(Spelling::flag) + " " + *why);
      table.set_value(*f, target, value, "", Spelling::flag);
      (*values)[f->key] = value;
      if (given) (*given)[f->key] = value;
    };
    CLI::Option* option = nullptr;
    if (repeatable) {
      option = cmd->add_option_function<std::vector<std::string>>(
          names,
          [apply](const std::vector<std::string>& texts) {
            for (const auto& text : texts) apply(text);
          },
          option_help<Options>(field))->delimiter(',');
    } else {
      option = cmd->add_option_function<std::string>(names, apply, option_help<Options>(field));
      // `--flag` alone means true; `--flag false` still turns a default of true off.
      if (field.kind == "boolean") option->expected(0, 1);
    }
    const std::string type = field.kind == "object of integers" ? "NAME=K"
                             : field.kind == "integer"           ? "INT"
                             : field.kind == "number"            ? "FLOAT"
                             : field.kind == "list of numbers"   ? "FLOAT"
                             : field.kind == "boolean"           ? "BOOL"
                                                                 : "TEXT";
    option->type_name(type);
    if (field.kind == "boolean") {
      // CLI11 hands a bare optional-value flag its default string, which would turn `--flag` off:
      // booleans show their default in the help instead.
      option->description(option->get_description() + "; default " + option_detail::show(field.get(shown)));
    } else if (!field.default_note.empty()) {
      option->default_str(field.default_note);
    } else if (!repeatable) {
      option->default_str(option_detail::show(field.get(shown)));
    }
  }
}

}  // namespace userip::cli
