// Option parsing shared by several commands (defined in the command file that owns the option).
#pragma once

#include <string>
#include <vector>

#include "mixq/formats/type_table.h"
#include "mixq/plan/plan.h"

namespace mixq::cli {

// --types a,b,c: type names (any spelling parse_type_name takes); throws PolicyError when empty.
// Defined in cmd_measure.cpp.
std::vector<TypeId> parse_type_list(const std::string& list);

// The plan target and constraints from mixq plan's options (--target-bpw / --target-size /
// --target-size-of, --compat, --types, --tensor-type rules). Defined in cmd_plan.cpp.
PlanOptions plan_options(double target_bpw, const std::string& target_size, const std::string& target_size_of,
                         const std::string& compat, const std::string& types, const std::vector<std::string>& rules);

// --tensor-type-file: the REGEX=TYPE lines of a file, trimmed, without blank and '#' lines;
// throws PolicyError for a directory or an unreadable file. Defined in cmd_quantize.cpp.
std::vector<std::string> read_rule_file(const std::string& path);

// llama-quantize's trailing THREADS argument: `threads` when it is empty, else its value; throws
// PolicyError unless the whole argument is a decimal number. Defined in cmd_quantize.cpp.
int positional_threads(const std::string& positional, int threads);

}  // namespace mixq::cli
