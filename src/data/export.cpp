#include "userip/data/export.h"

#include <fmt/format.h>

#include "userip/util/fs.h"

namespace userip::data {

std::string csv_escape(std::string_view field) {
  if (field.find_first_of(",\"\n\r") == std::string_view::npos) return std::string(field);
  std::string out = "\"";
  for (char c : field) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

void export_csv(const Dataset& d, const std::filesystem::path& out_dir) {
  std::filesystem::create_directories(out_dir);
  {
    AtomicFileWriter out(out_dir / "interactions.csv");
    bool with_split = d.has_split();
    out.write(fmt::format("user,item,{},timestamp{}\n", d.label_kind == LabelKind::click ? "click" : "rating",
                          with_split ? ",split" : ""));
    std::string line;
    const auto& x = d.interactions;
    for (std::size_t i = 0; i < x.size(); ++i) {
      line.clear();
      line += csv_escape(d.user_ids[x.user[i]]);
      line += ',';
      line += csv_escape(d.item_ids[x.item[i]]);
      line += fmt::format(",{},{}", x.rating[i], x.timestamp[i]);
      if (with_split) {
        line += ',';
        line += to_string(d.split.part[i]);
      }
      line += '\n';
      out.write(line);
    }
    out.commit();
  }
  AtomicFileWriter out(out_dir / "items.csv");
  std::string header = "item";
  for (const auto& f : d.item_fields) header += "," + csv_escape(f.name);
  out.write(header + "\n");
  for (std::size_t i = 0; i < d.num_items(); ++i) {
    std::string line = csv_escape(d.item_ids[i]);
    for (const auto& f : d.item_fields) line += "," + csv_escape(f.values[i]);
    out.write(line + "\n");
  }
  out.commit();
}

}  // namespace userip::data
