// The --token-file format, read by the server (the accepted secrets) and by
// chat_client (its own secret).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace chat {

// The secrets in a token file's text: one a line, surrounding blanks trimmed;
// blank lines and lines starting with '#' are ignored.
std::vector<std::string> parse_token_file(std::string_view text);

}  // namespace chat
