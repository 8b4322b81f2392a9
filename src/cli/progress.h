// Progress display shared by long-running commands: a redrawn bar on a terminal, plain lines
// (at most one every few seconds) when stderr is a file or a pipe.
#pragma once

#include <string>

namespace mixq::cli {

class Progress {
 public:
  explicit Progress(std::string label);
  // done of total units; `what` names the current item; elapsed seconds since the start.
  void update(size_t done, size_t total, const std::string& what, double elapsed);
  void finish();

 private:
  std::string label_;
  bool tty_;
  double last_line_ = -1e9;
  bool drawn_ = false;
};

}  // namespace mixq::cli
