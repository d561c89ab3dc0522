#pragma once
// MovieLens "ml-latest-small" (2016: 100,004 ratings, 671 users, 9,066 movies), exported from
// the copy inside Debian's r-cran-dslabs package. GroupLens' terms forbid redistribution: the
// data is exported on the user's machine and never shipped with userip.
#include <filesystem>

#include "userip/data/import.h"

namespace userip::data {

struct MovieLensOptions {
  std::filesystem::path out;
  // The R data directory of dslabs (lazy-load database "Rdata").
  std::filesystem::path dslabs_data_dir = "/usr/lib/R/site-library/dslabs/data";
  std::filesystem::path rscript = "Rscript";
  bool show_progress = true;
};

// Writes the raw export as CSV (movieId,title,year,genres,userId,rating,timestamp; missing
// values empty) to `csv_path`. Throws userip::Error naming the set-up step when R or the
// package is missing.
void export_movielens_csv(const MovieLensOptions& options, const std::filesystem::path& csv_path);

// Exports and imports into options.out (no split yet).
ImportReport import_movielens(const MovieLensOptions& options);

}  // namespace userip::data
