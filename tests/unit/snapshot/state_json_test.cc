#include "vmm/snapshot/state_json.h"

#include <gtest/gtest.h>

#include "tests/unit/snapshot/sample_tree.h"

namespace vmm::snapshot {
namespace {

TEST(StateJson, TreeAsNestedObjects) {
  auto j = to_json(testing::sample_tree());
  EXPECT_EQ(j["serial0"]["dll"], 12);
  EXPECT_EQ(j["serial0"]["thr_ipending"], true);
  EXPECT_EQ(j["serial0"]["rx_fifo"]["size"], 3);
  EXPECT_EQ(j["serial0"]["rx_fifo"]["hex"], "68690a");
  EXPECT_FALSE(j["serial0"]["rx_fifo"].contains("truncated"));
  EXPECT_EQ(j["virtio0"]["queue1"]["next_avail"], 65535);
  EXPECT_EQ(j["vcpu0"]["tsc_offset"], -123456789);
  EXPECT_EQ(j["vcpu0"]["mp_state"], "runnable");
  EXPECT_EQ(j["vcpu0"]["empty"]["size"], 0);
  EXPECT_EQ(j["vcpu0"]["empty"]["hex"], "");
  EXPECT_EQ(j["clock"], ~uint64_t{0});
  EXPECT_EQ(j["vcpu0"]["regs"]["regs"]["size"], 32);
  // Order follows the tree.
  std::vector<std::string> keys;
  for (auto& [k, v] : j.items()) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"clock", "serial0", "virtio0", "vcpu0"}));
}

TEST(StateJson, LongBytesAreTruncated) {
  Section s;
  std::vector<uint8_t> b(100);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i);
  s.put_bytes("xsave", b);
  auto j = to_json(s, JsonOptions{4});
  EXPECT_EQ(j["xsave"]["size"], 100);
  EXPECT_EQ(j["xsave"]["hex"], "00010203");
  EXPECT_EQ(j["xsave"]["truncated"], true);
  auto full = to_json(s, JsonOptions{100});
  EXPECT_EQ(full["xsave"]["hex"].get<std::string>().size(), 200u);
  EXPECT_FALSE(full["xsave"].contains("truncated"));
}

TEST(StateJson, StateFileHeader) {
  auto f = decode_state(*encode_state(testing::sample_header(), testing::sample_tree()));
  ASSERT_TRUE(f.ok());
  auto j = to_json(*f);
  EXPECT_EQ(j["header"]["format_version"], 1);
  EXPECT_EQ(j["header"]["vmm_version"], "0.1.0");
  EXPECT_EQ(j["header"]["cpu_template"], "host");
  EXPECT_EQ(j["header"]["created_unix"], 1700000000);
  EXPECT_EQ(j["header"]["config"]["memory"], "536870912");
  EXPECT_EQ(j["header"]["payload_bytes"], f->payload_bytes);
  EXPECT_EQ(j["header"]["crc32c"], fmt::format("{:#010x}", f->crc));
  EXPECT_EQ(j["state"]["serial0"]["lcr"], 3);
}

TEST(StateJson, InvalidUtf8StringsStillDump) {
  Section s;
  s.put_string("s", "\xff\xfe");
  auto text = to_json(s).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  EXPECT_NE(text.find("\"s\""), std::string::npos);
}

}  // namespace
}  // namespace vmm::snapshot
