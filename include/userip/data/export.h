#pragma once
// Writes a dataset back out as CSV with the user's original ids: interactions.csv
// (user,item,rating|click,timestamp[,split]) and items.csv (item + every item field).
#include <filesystem>

#include "userip/data/dataset.h"

namespace userip::data {

std::string csv_escape(std::string_view field);
void export_csv(const Dataset& dataset, const std::filesystem::path& out_dir);

}  // namespace userip::data
