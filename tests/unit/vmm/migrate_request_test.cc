// parse_migrate_request: the control socket's "migrate" arguments.
#include <gtest/gtest.h>

#include "vmm/core/migration.h"

namespace vmm {
namespace {

TEST(MigrateRequest, DefaultsAndAllFields) {
  auto d = parse_migrate_request({{"cmd", "migrate"}, {"uri", "tcp:10.0.0.2:7000"}});
  ASSERT_TRUE(d.ok()) << d.error().to_string();
  EXPECT_EQ(d->uri, "tcp:10.0.0.2:7000");
  EXPECT_EQ(d->downtime_ms, 300u);
  EXPECT_EQ(d->bandwidth_mibs, 0u);
  EXPECT_EQ(d->timeout_s, 0u);
  EXPECT_EQ(d->max_rounds, 30u);
  EXPECT_FALSE(d->fail_if_not_converged);

  auto a = parse_migrate_request({{"uri", "unix:/tmp/m.sock"},
                                  {"downtime_ms", 50},
                                  {"bandwidth_mibs", 100},
                                  {"timeout_s", 60},
                                  {"max_rounds", 3},
                                  {"on_timeout", "fail"}});
  ASSERT_TRUE(a.ok()) << a.error().to_string();
  EXPECT_EQ(a->downtime_ms, 50u);
  EXPECT_EQ(a->bandwidth_mibs, 100u);
  EXPECT_EQ(a->timeout_s, 60u);
  EXPECT_EQ(a->max_rounds, 3u);
  EXPECT_TRUE(a->fail_if_not_converged);
}

TEST(MigrateRequest, RefusesBadInput) {
  const nlohmann::json bad[] = {
      {{"cmd", "migrate"}},                                      // no uri
      {{"uri", 7}},                                              // not a string
      {{"uri", "ftp:host:1"}},                                   // unknown scheme
      {{"uri", "tcp:host"}},                                     // no port
      {{"uri", "tcp:h:1"}, {"downtime_ms", 0}},                  // below range
      {{"uri", "tcp:h:1"}, {"downtime_ms", -5}},                 // negative
      {{"uri", "tcp:h:1"}, {"max_rounds", 1001}},                // above range
      {{"uri", "tcp:h:1"}, {"bandwidth_mibs", "fast"}},          // not a number
      {{"uri", "tcp:h:1"}, {"timeout_s", 1.5}},                  // not an integer
      {{"uri", "tcp:h:1"}, {"on_timeout", "maybe"}},             // unknown policy
  };
  for (const auto& req : bad) {
    auto r = parse_migrate_request(req);
    EXPECT_FALSE(r.ok()) << req.dump();
    if (!r.ok()) {
      EXPECT_FALSE(r.error().to_string().empty());
    }
  }
}

}  // namespace
}  // namespace vmm
