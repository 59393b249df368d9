// A minimal JSON writer for the client's --json output: one flat object per line.
//
// Only what the client prints: strings, unsigned integers, booleans and arrays
// of strings or of small objects. Strings are escaped per RFC 8259; bytes that
// are not valid UTF-8 become U+FFFD, so every line parses whatever the server sent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace chat {

// Length of the well-formed UTF-8 sequence that starts at text[at] (1 for
// ASCII), or 0 if none does: overlong forms, surrogates and code points over
// U+10FFFF are not well-formed. The display uses it too.
std::size_t utf8_sequence_length(std::string_view text, std::size_t at) noexcept;

// Appends `text` as a quoted JSON string.
void append_json_string(std::string& out, std::string_view text);
std::string json_string(std::string_view text);

// Builds one object field by field: JsonObject().add("type", "message").str().
class JsonObject {
public:
    JsonObject& add(std::string_view key, std::string_view value);
    JsonObject& add(std::string_view key, const char* value) { return add(key, std::string_view(value)); }
    JsonObject& add(std::string_view key, const std::string& value) { return add(key, std::string_view(value)); }
    JsonObject& add(std::string_view key, bool value);
    // Any unsigned integer (a bool takes the overload above).
    template <class T>
        requires std::is_unsigned_v<T> && (!std::is_same_v<T, bool>)
    JsonObject& add(std::string_view key, T value) {
        return add_number(key, static_cast<std::uint64_t>(value));
    }
    JsonObject& add(std::string_view key, const std::vector<std::string>& values);
    // `json` must already be valid JSON (a nested object or array).
    JsonObject& add_raw(std::string_view key, std::string_view json);

    // The object, without a trailing newline.
    std::string str() const { return body_ + "}"; }

private:
    void key(std::string_view name);
    JsonObject& add_number(std::string_view key, std::uint64_t value);

    std::string body_ = "{";
};

}  // namespace chat
