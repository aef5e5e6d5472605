#include "vmm/core/console.h"

#include <gtest/gtest.h>

#include <string>

namespace vmm {
namespace {

PanicDetector::Event feed_all(PanicDetector& d, const std::string& s) {
  PanicDetector::Event last = PanicDetector::Event::kNone;
  for (char c : s) {
    auto e = d.feed(static_cast<uint8_t>(c));
    if (e != PanicDetector::Event::kNone) last = e;
  }
  return last;
}

TEST(PanicDetector, FindsPanicAndItsEnd) {
  PanicDetector d;
  EXPECT_EQ(feed_all(d, "[    0.1] hello\r\n"), PanicDetector::Event::kNone);
  EXPECT_EQ(feed_all(d, "[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n"),
            PanicDetector::Event::kPanic);
  EXPECT_EQ(d.reason(), "Kernel panic - not syncing: VFS: Unable to mount root fs");
  EXPECT_EQ(feed_all(d, "---[ end Kernel panic - not syncing: VFS ]---\r\n"),
            PanicDetector::Event::kPanicEnd);
}

TEST(PanicDetector, IgnoresPartialLinesAndBoundsLength) {
  PanicDetector d;
  EXPECT_EQ(feed_all(d, "Kernel panic - not sync"), PanicDetector::Event::kNone);
  std::string huge(100000, 'x');
  EXPECT_EQ(feed_all(d, huge + "\n"), PanicDetector::Event::kNone);
}

}  // namespace
}  // namespace vmm
