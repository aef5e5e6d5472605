// Result<T>: a value or an Error, in the shape of std::expected (C++23), which
// C++20 lacks. Errors carry a message and, where one applies, an errno value.
#pragma once

#include <fmt/core.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

namespace vmm {

struct Error {
  std::string message;
  int errno_value = 0;

  std::string to_string() const {
    if (errno_value == 0) return message;
    return fmt::format("{}: {}", message, std::strerror(errno_value));
  }
};

// Builds an Error from a format string.
template <typename... Args>
Error make_error(fmt::format_string<Args...> f, Args&&... args) {
  return Error{fmt::format(f, std::forward<Args>(args)...), 0};
}

// Builds an Error carrying the current errno.
template <typename... Args>
Error errno_error(fmt::format_string<Args...> f, Args&&... args) {
  int e = errno;
  return Error{fmt::format(f, std::forward<Args>(args)...), e};
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : err_(std::move(error)), ok_(false) {}  // NOLINT

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const& { return err_; }
  Error&& error() && { return std::move(err_); }

 private:
  Error err_;
  bool ok_ = true;
};

inline Result<void> ok() { return {}; }

}  // namespace vmm

#define VMM_CONCAT_INNER(a, b) a##b
#define VMM_CONCAT(a, b) VMM_CONCAT_INNER(a, b)

// VMM_TRY(auto x, expr): evaluates expr (a Result<T>), returns its error from
// the enclosing function, else binds the value.
#define VMM_TRY(decl, expr)                                          \
  auto VMM_CONCAT(vmm_try_, __LINE__) = (expr);                      \
  if (!VMM_CONCAT(vmm_try_, __LINE__).ok())                          \
    return std::move(VMM_CONCAT(vmm_try_, __LINE__)).error();        \
  decl = std::move(VMM_CONCAT(vmm_try_, __LINE__)).value()

// VMM_CHECK(expr): for Result<void>.
#define VMM_CHECK(expr)                                              \
  do {                                                               \
    auto vmm_check_r = (expr);                                       \
    if (!vmm_check_r.ok()) return std::move(vmm_check_r).error();    \
  } while (0)
