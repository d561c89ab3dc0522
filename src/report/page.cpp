#include "report/page.h"

#include <fmt/format.h>

#include "userip/report/report.h"
#include "userip/util/strings.h"

namespace userip::report {

namespace {

const char* const kStyle = R"CSS(
body { font: 14px/1.45 "DejaVu Sans", Verdana, sans-serif; color: #222; background: #fff; margin: 0 auto;
       padding: 16px 24px 40px; max-width: 1352px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #4e79a7; }
h3 { font-size: 16px; margin: 20px 0 6px; }
p.lead, p.caption, .notes { color: #444; }
code, .mono { font-family: "DejaVu Sans Mono", monospace; font-size: 12.5px; }
nav ol { margin: 4px 0; padding-left: 22px; columns: 2; }
.plots { display: flex; flex-wrap: wrap; gap: 14px 16px; }
figure.plot { margin: 0; width: 640px; border: 1px solid #ddd; border-radius: 4px; padding: 8px 8px 4px; }
figure.plot figcaption { font-weight: bold; margin-bottom: 2px; }
figure.plot .sub { font-weight: normal; color: #555; font-size: 12.5px; }
figure.plot svg { display: block; }
.legend { font-size: 12.5px; margin: 2px 0 4px; }
.legend span.item { display: inline-block; margin-right: 14px; white-space: nowrap; }
.legend span.swatch { display: inline-block; width: 11px; height: 11px; margin-right: 4px; vertical-align: -1px;
                      border-radius: 2px; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f3f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.better { background: #e3f4e1; }
td.worse { background: #fbe4e2; }
td.text { max-width: 420px; white-space: pre-wrap; overflow-wrap: anywhere; }
tr.base td { background: #fafafa; }
.errors { border: 2px solid #c0392b; background: #fdecea; color: #8e1b10; padding: 8px 12px; white-space: pre-wrap;
          font-family: "DejaVu Sans Mono", monospace; }
.notes li { margin: 2px 0; }
svg text { font-family: "DejaVu Sans", Verdana, sans-serif; font-size: 11.5px; fill: #333; }
svg .grid { stroke: #e6e6e6; }
svg .axis { stroke: #888; }
)CSS";

// Collects every error of the page's scripts where scripts/render_report.sh (and a reader) sees it.
// A script of its own, ahead of the drawing code, so that even a syntax error there is caught.
const char* const kErrorCollector = R"JS(
window.reportErrors = [];
window.publishReportErrors = function () {
  document.body.dataset.errors = String(window.reportErrors.length);
  var box = document.getElementById("script-errors");
  box.textContent = "Script errors (some plots may be missing):\n" + window.reportErrors.join("\n");
  box.hidden = window.reportErrors.length === 0;
};
window.onerror = function (message, source, line, column) {
  window.reportErrors.push(String(message) + " (line " + line + ":" + column + ")");
  window.publishReportErrors();
};
)JS";

const char* const kDrawing = R"JS(
(function () {
  "use strict";
  var SVG_NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#bab0ac", "#1f77b4", "#aec7e8", "#ffbb78", "#98df8a", "#d62728", "#ff9896",
                 "#9467bd", "#c5b0d5", "#8c564b", "#17becf"];
  var NO_COLOUR = "#888888";
  var WIDTH = 640, HEIGHT = 330, MARGIN = {left: 72, right: 16, top: 12, bottom: 48};

  function colour(i) { return i < 0 ? NO_COLOUR : PALETTE[i % PALETTE.length]; }
  function finite(v) { return typeof v === "number" && isFinite(v); }

  function svgNode(tag, attributes, parent) {
    var node = document.createElementNS(SVG_NS, tag);
    for (var key in attributes) node.setAttribute(key, attributes[key]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function svgText(parent, x, y, text, attributes) {
    var node = svgNode("text", attributes || {}, parent);
    node.setAttribute("x", x);
    node.setAttribute("y", y);
    node.textContent = text;
    return node;
  }

  function formatNumber(v) {
    var a = Math.abs(v);
    if (v === 0) return "0";
    if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
    return String(Number(v.toPrecision(4)));
  }

  // Round numbers covering [lo, hi], about `count` of them.
  function linearTicks(lo, hi, count) {
    var span = hi - lo, step = Math.pow(10, Math.floor(Math.log10(span / count))), error = span / count / step;
    if (error >= 7.5) step *= 10; else if (error >= 3.5) step *= 5; else if (error >= 1.5) step *= 2;
    var out = [];
    // Integer multiples of the step, so that zero is exactly 0 rather than a rounding residue.
    for (var k = Math.ceil(lo / step); k * step <= hi + step * 1e-9; k++) out.push(Number((k * step).toPrecision(12)));
    return out;
  }
  function logTicks(lo, hi) {
    var out = [];
    for (var e = Math.floor(Math.log10(lo)); e <= Math.floor(Math.log10(hi)); e++) {
      [1, 2, 5].forEach(function (m) { var v = m * Math.pow(10, e); if (v >= lo && v <= hi) out.push(v); });
    }
    return out.length >= 2 ? out : linearTicks(lo, hi, 5);
  }

  // [min, max] of the finite values, widened so a constant series still has a height.
  function extent(values, padding) {
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) { if (finite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
    if (lo === Infinity) return null;
    if (lo === hi) { var d = Math.abs(lo) * 0.05 || 1; return [lo - d, hi + d]; }
    var pad = (hi - lo) * (padding || 0);
    return [lo - pad, hi + pad];
  }

  function scale(domain, range, logarithmic) {
    if (logarithmic) {
      var l0 = Math.log(domain[0]), l1 = Math.log(domain[1]);
      return function (v) { return range[0] + (Math.log(v) - l0) / (l1 - l0) * (range[1] - range[0]); };
    }
    return function (v) { return range[0] + (v - domain[0]) / (domain[1] - domain[0]) * (range[1] - range[0]); };
  }

  function legend(figure, entries) {
    var box = document.createElement("div");
    box.className = "legend";
    entries.forEach(function (entry) {
      var item = document.createElement("span");
      item.className = "item";
      var swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = entry.colour;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(entry.name));
      box.appendChild(item);
    });
    figure.appendChild(box);
  }

  // The SVG with its plot area, y axis (grid and labels) and axis titles; the caller draws the x axis.
  function frame(figure, spec, yDomain, logY) {
    var svg = svgNode("svg", {width: WIDTH, height: HEIGHT, viewBox: "0 0 " + WIDTH + " " + HEIGHT}, null);
    figure.appendChild(svg);
    var area = {left: MARGIN.left, right: WIDTH - MARGIN.right, top: MARGIN.top, bottom: HEIGHT - MARGIN.bottom};
    var y = scale(yDomain, [area.bottom, area.top], logY);
    (logY ? logTicks(yDomain[0], yDomain[1]) : linearTicks(yDomain[0], yDomain[1], 6)).forEach(function (t) {
      svgNode("line", {x1: area.left, x2: area.right, y1: y(t), y2: y(t), "class": "grid"}, svg);
      svgText(svg, area.left - 6, y(t) + 4, formatNumber(t), {"text-anchor": "end"});
    });
    svgNode("line", {x1: area.left, x2: area.left, y1: area.top, y2: area.bottom, "class": "axis"}, svg);
    svgNode("line", {x1: area.left, x2: area.right, y1: area.bottom, y2: area.bottom, "class": "axis"}, svg);
    svgText(svg, (area.left + area.right) / 2, HEIGHT - 8, spec.x_label || "", {"text-anchor": "middle"});
    var middle = (area.top + area.bottom) / 2;
    svgText(svg, 16, middle, (spec.y_label || "") + (logY ? " (log scale)" : ""),
            {"text-anchor": "middle", transform: "rotate(-90 16 " + middle + ")"});
    return {svg: svg, area: area, y: y};
  }

  function numericXAxis(plot, domain) {
    var x = scale(domain, [plot.area.left, plot.area.right], false);
    linearTicks(domain[0], domain[1], 8).forEach(function (t) {
      svgNode("line", {x1: x(t), x2: x(t), y1: plot.area.bottom, y2: plot.area.bottom + 4, "class": "axis"}, plot.svg);
      svgText(plot.svg, x(t), plot.area.bottom + 17, formatNumber(t), {"text-anchor": "middle"});
    });
    return x;
  }

  function drawLine(figure, spec) {
    var xs = [], ys = [];
    spec.series.forEach(function (s) {
      s.points.forEach(function (p) {
        if (finite(p[1]) && (!spec.log_y || p[1] > 0)) { xs.push(p[0]); ys.push(p[1]); }
      });
    });
    var xDomain = extent(xs, 0), yDomain = extent(ys, 0.05);
    if (!xDomain || !yDomain) return 0;
    if (spec.log_y) {
      var lowest = Math.min.apply(null, ys), highest = Math.max.apply(null, ys);
      yDomain = lowest === highest ? [lowest / 2, highest * 2] : [lowest / 1.1, highest * 1.1];
    }
    legend(figure, spec.series.map(function (s, i) { return {name: s.name, colour: colour(i)}; }));
    var plot = frame(figure, spec, yDomain, spec.log_y);
    var x = numericXAxis(plot, xDomain), marks = 0;
    spec.series.forEach(function (s, i) {
      var path = "", pen = "M", points = 0;
      s.points.forEach(function (p) {
        if (!finite(p[1]) || (spec.log_y && p[1] <= 0)) { pen = "M"; return; }
        path += pen + x(p[0]).toFixed(1) + "," + plot.y(p[1]).toFixed(1) + " ";
        pen = "L";
        points++;
      });
      if (!points) return;
      svgNode("path", {d: path, fill: "none", stroke: colour(i), "stroke-width": 2}, plot.svg);
      if (s.points.length <= 60) {
        s.points.forEach(function (p) {
          if (!finite(p[1]) || (spec.log_y && p[1] <= 0)) return;
          svgNode("circle", {cx: x(p[0]), cy: plot.y(p[1]), r: 3, fill: colour(i)}, plot.svg);
        });
      }
      marks += points;
    });
    return marks;
  }

  function drawBars(figure, spec) {
    var values = [];
    spec.series.forEach(function (s) {
      s.values.forEach(function (v) {
        if (!v || !finite(v.mean)) return;
        var std = finite(v.std) ? v.std : 0;
        values.push(v.mean - std, v.mean + std);
        (v.seeds || []).forEach(function (seed) { values.push(seed); });
      });
    });
    if (spec.include_zero) values.push(0);
    var yDomain = extent(values, spec.include_zero ? 0.02 : 0.15);
    if (!yDomain) return 0;
    if (spec.include_zero && yDomain[0] < 0 && Math.min.apply(null, values) >= 0) yDomain[0] = 0;
    legend(figure, spec.series.map(function (s, i) { return {name: s.name, colour: colour(i)}; }));
    var plot = frame(figure, spec, yDomain, false);
    var categories = spec.categories, groupWidth = (plot.area.right - plot.area.left) / categories.length;
    var barWidth = groupWidth * 0.8 / spec.series.length;
    var labelEvery = Math.ceil(categories.length / 24);
    var base = plot.y(yDomain[0] <= 0 && yDomain[1] >= 0 ? 0 : yDomain[0]);
    var marks = 0;
    categories.forEach(function (category, c) {
      var groupLeft = plot.area.left + c * groupWidth;
      if (c % labelEvery === 0) {
        svgText(plot.svg, groupLeft + groupWidth / 2, plot.area.bottom + 17, String(category),
                {"text-anchor": "middle"});
      }
      spec.series.forEach(function (s, i) {
        var v = s.values[c], left = groupLeft + groupWidth * 0.1 + i * barWidth, middle = left + barWidth / 2;
        if (!v || !finite(v.mean)) {
          if (categories.length <= 12) {
            svgText(plot.svg, middle, plot.area.bottom - 4, "n/a", {"text-anchor": "middle", "font-size": "9px"});
          }
          return;
        }
        var top = plot.y(v.mean);
        svgNode("rect", {x: left + barWidth * 0.06, width: Math.max(barWidth * 0.88, 0.8), y: Math.min(top, base),
                         height: Math.max(Math.abs(base - top), 0.8), fill: colour(i)}, plot.svg);
        marks++;
        if (finite(v.std) && v.std > 0) {
          var low = plot.y(v.mean - v.std), high = plot.y(v.mean + v.std), cap = Math.min(barWidth * 0.25, 6);
          var whisker = "M" + middle + "," + low + " L" + middle + "," + high +
                        " M" + (middle - cap) + "," + low + " L" + (middle + cap) + "," + low +
                        " M" + (middle - cap) + "," + high + " L" + (middle + cap) + "," + high;
          svgNode("path", {d: whisker, stroke: "#222", "stroke-width": 1.3, fill: "none"}, plot.svg);
        }
        var seeds = (v.seeds || []).filter(finite);
        seeds.forEach(function (seed, k) {
          var offset = seeds.length > 1 ? (k / (seeds.length - 1) - 0.5) * barWidth * 0.5 : 0;
          svgNode("circle", {cx: middle + offset, cy: plot.y(seed), r: 2.2, fill: "#fff", stroke: "#222",
                             "stroke-width": 0.9}, plot.svg);
        });
      });
    });
    return marks;
  }

  function drawScatter(figure, spec) {
    var xs = spec.points.map(function (p) { return p[0]; }), ys = spec.points.map(function (p) { return p[1]; });
    var xDomain = extent(xs, 0.04), yDomain = extent(ys, 0.04);
    if (!xDomain || !yDomain) return 0;
    var entries = (spec.legend || []).slice(0, PALETTE.length).map(function (name, i) {
      return {name: name, colour: colour(i)};
    });
    if ((spec.legend || []).length > PALETTE.length) entries.push({name: "... (colours repeat)", colour: "#fff"});
    if (entries.length) legend(figure, entries);
    var plot = frame(figure, spec, yDomain, false);
    var x = numericXAxis(plot, xDomain), marks = 0;
    spec.points.forEach(function (p) {
      if (!finite(p[0]) || !finite(p[1])) return;
      svgNode("circle", {cx: x(p[0]).toFixed(1), cy: plot.y(p[1]).toFixed(1), r: 2.6, fill: colour(p[2]),
                         "fill-opacity": 0.75}, plot.svg);
      marks++;
    });
    return marks;
  }

  var drawers = {line: drawLine, bars: drawBars, scatter: drawScatter};
  var data = JSON.parse(document.getElementById("report-data").textContent);
  Array.prototype.forEach.call(document.querySelectorAll("figure.plot"), function (figure) {
    try {
      var spec = data.plots[figure.id];
      if (!spec) throw new Error("no data for the figure");
      var draw = drawers[spec.kind];
      if (!draw) throw new Error("no drawer for plots of kind '" + spec.kind + "'");
      var marks = draw(figure, spec);
      figure.dataset.marks = String(marks);
      figure.dataset.drawn = marks > 0 ? "true" : "false";
    } catch (error) {
      window.reportErrors.push(figure.id + ": " + (error && error.stack ? error.stack : String(error)));
    }
  });
  window.publishReportErrors();
  document.body.dataset.pageHeight = String(Math.ceil(document.documentElement.scrollHeight));
  document.body.dataset.rendered = "true";
})();
)JS";

// Length of the UTF-8 sequence starting at text[i] when it is well-formed, else 0.
std::size_t utf8_sequence_length(std::string_view text, std::size_t i) {
  const auto lead = static_cast<unsigned char>(text[i]);
  const std::size_t length = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 0;
  if (length == 0 || i + length > text.size()) return 0;
  return is_valid_utf8(text.substr(i, length)) ? length : 0;
}

}  // namespace

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 8);
  for (std::size_t i = 0; i < text.size();) {
    const char c = text[i];
    if (static_cast<unsigned char>(c) >= 0x80) {
      const std::size_t length = utf8_sequence_length(text, i);
      if (length == 0) {
        out += "\xEF\xBF\xBD";  // U+FFFD
        ++i;
      } else {
        out.append(text.substr(i, length));
        i += length;
      }
      continue;
    }
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      case '\0': out += "\xEF\xBF\xBD"; break;
      default: out += c;
    }
    ++i;
  }
  return out;
}

std::string json_for_script(const nlohmann::ordered_json& value) {
  const std::string text = value.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  // '<' only ever occurs inside JSON strings, where \u003c means the same character.
  return replace_all(text, "<", "\\u003c");
}

std::string page_html(const std::string& title, const std::string& body, const nlohmann::ordered_json& data) {
  return fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n"
      "<style>{}</style>\n</head>\n<body data-errors=\"0\">\n"
      "<div id=\"script-errors\" class=\"errors\" hidden></div>\n"
      "<noscript><p class=\"errors\">The plots of this page are drawn by its own inline JavaScript; "
      "enable scripts to see them (the tables need none).</p></noscript>\n"
      "{}\n<script type=\"application/json\" id=\"report-data\">{}</script>\n<script>{}</script>\n<script>{}</script>\n"
      "</body>\n</html>\n",
      html_escape(title), kStyle, body, json_for_script(data), kErrorCollector, kDrawing);
}

}  // namespace userip::report
