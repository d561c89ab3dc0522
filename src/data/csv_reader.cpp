// RFC 4180 CSV over a memory-mapped file. Fields are views into the mapping; only quoted fields
// with doubled quotes are copied (to unescape them). Pages already parsed are released as we go,
// so a 20-million-row import keeps a small resident set.
#include <sys/mman.h>

#include "data/record_readers.h"
#include "userip/util/error.h"
#include "userip/util/strings.h"

namespace userip::data {

namespace {
constexpr std::size_t kReleaseEveryBytes = 64u << 20;
}

CsvReader::CsvReader(const std::filesystem::path& path, char delimiter)
    : file_(path), delimiter_(delimiter) {
  path_ = path;
  bytes_total_ = file_.size();
  text_ = file_.view();
  if (!text_.empty()) madvise(const_cast<std::uint8_t*>(file_.data()), file_.size(), MADV_SEQUENTIAL);
  if (text_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;  // UTF-8 byte order mark
  next_line_ = 1;
  USERIP_CHECK(read_record(), "{}: empty file (expected a header line)", path.string());
  for (auto& f : fields_) {
    std::string name(trim(f));
    USERIP_CHECK(!name.empty(), "{}:1: empty column name in the header", path.string());
    USERIP_CHECK(column_index(name) < 0, "{}:1: column '{}' appears twice in the header", path.string(), name);
    columns_.push_back(std::move(name));
  }
}

bool CsvReader::next() {
  try {
    return read_record();
  } catch (const Error&) {
    // Resynchronise at the next line so a caller that skips bad rows can go on.
    std::size_t newline = text_.find('\n', pos_);
    pos_ = newline == std::string_view::npos ? text_.size() : newline + 1;
    if (newline != std::string_view::npos) ++next_line_;
    throw;
  }
}

std::optional<std::string_view> CsvReader::field(int column) const {
  if (column < 0 || static_cast<std::size_t>(column) >= fields_.size()) return std::nullopt;
  return fields_[column];
}

bool CsvReader::read_record() {
  fields_.clear();
  scratch_.clear();
  // Skip blank lines between records: a trailing newline must not become an empty record.
  while (pos_ < text_.size() && (text_[pos_] == '\n' || text_[pos_] == '\r')) {
    if (text_[pos_] == '\n') ++next_line_;
    ++pos_;
  }
  if (pos_ >= text_.size()) return false;
  line_ = next_line_;
  release_consumed();

  // Quoted fields that needed unescaping live in scratch_; record where, then take views once
  // the record is complete (scratch_ may reallocate while it grows).
  pending_.clear();
  const std::size_t n = text_.size();
  while (true) {
    if (pos_ < n && text_[pos_] == '"') {
      ++pos_;
      std::size_t start = pos_;
      bool escaped = false;
      std::size_t scratch_begin = scratch_.size();
      while (true) {
        std::size_t quote = text_.find('"', pos_);
        USERIP_CHECK(quote != std::string_view::npos, "{}:{}: unterminated quoted field (field {})", path_.string(),
                     line_, pending_.size() + 1);
        for (std::size_t i = pos_; i < quote; ++i) {
          if (text_[i] == '\n') ++next_line_;
        }
        if (quote + 1 < n && text_[quote + 1] == '"') {
          if (!escaped) {
            escaped = true;
            scratch_.append(text_.data() + start, quote + 1 - start);
          } else {
            scratch_.append(text_.data() + pos_, quote + 1 - pos_);
          }
          pos_ = quote + 2;
          continue;
        }
        if (escaped) {
          scratch_.append(text_.data() + pos_, quote - pos_);
          pending_.push_back({scratch_begin, scratch_.size() - scratch_begin, true});
        } else {
          pending_.push_back({start, quote - start, false});
        }
        pos_ = quote + 1;
        break;
      }
      // After a closing quote only a delimiter or the end of the record may follow.
      if (pos_ < n && text_[pos_] == '\r') ++pos_;
      if (pos_ < n && text_[pos_] != delimiter_ && text_[pos_] != '\n') {
        fail("{}:{}: unexpected character {} after the closing quote of field {}", path_.string(), next_line_,
             quote_for_message(text_.substr(pos_, 1)), pending_.size());
      }
    } else {
      // A quote inside an unquoted field is kept as a literal character, as Python's csv does.
      std::size_t start = pos_;
      while (pos_ < n && text_[pos_] != delimiter_ && text_[pos_] != '\n') {
        ++pos_;
      }
      std::size_t end = pos_;
      if (end > start && text_[end - 1] == '\r') --end;
      pending_.push_back({start, end - start, false});
    }
    if (pos_ >= n) break;
    if (text_[pos_] == '\n') {
      ++pos_;
      ++next_line_;
      break;
    }
    ++pos_;  // delimiter
    if (pos_ >= n) {  // a delimiter right before end of file: one last empty field
      pending_.push_back({pos_, 0, false});
      break;
    }
  }
  for (const auto& p : pending_) {
    fields_.push_back(p.in_scratch ? std::string_view(scratch_).substr(p.begin, p.length)
                                   : text_.substr(p.begin, p.length));
  }
  return true;
}

void CsvReader::release_consumed() {
  if (pos_ - released_ < kReleaseEveryBytes) return;
  // Tell the kernel the pages before the current record will not be read again.
  std::size_t page = 4096;
  std::size_t upto = (pos_ / page) * page;
  if (upto > released_) {
    madvise(const_cast<std::uint8_t*>(file_.data()) + released_, upto - released_, MADV_DONTNEED);
    released_ = upto;
  }
}

}  // namespace userip::data
