#pragma once
// The page around the report's sections: stylesheet, embedded data and the drawing script.
#include <string>

#include <nlohmann/json.hpp>

namespace userip::report {

// The whole document. `body` is trusted HTML (already escaped); `data` is embedded as JSON and
// must hold "plots": {figure id: drawing spec}, one per <figure class="plot" id=...> in `body`.
//
// Drawing specs ("kind" picks the drawer; null values are missing and drawn as nothing / "n/a"):
//   line:    {x_label, y_label, log_y, series: [{name, points: [[x, y|null], ...]}]}
//   bars:    {x_label, y_label, categories: [...], include_zero,
//             series: [{name, values: [null | {mean, std|null, seeds: [...]}] per category}]}
//   scatter: {x_label, y_label, points: [[x, y, colour index (-1: none)], ...], legend: [name per index]}
std::string page_html(const std::string& title, const std::string& body, const nlohmann::ordered_json& data);

}  // namespace userip::report
