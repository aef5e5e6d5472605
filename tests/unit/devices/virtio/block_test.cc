#include "devices/virtio/block.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "tests/unit/devices/virtio/device_harness.h"

namespace vmm::virtio {
namespace {

using testing::DeviceHarness;
using testing::MockBuf;
using testing::UsedElem;

constexpr uint64_t kFeatures = kFeatureVersion1 | kBlkFeatureFlush;
constexpr Gpa kHdr = DeviceHarness::kDataBase;
constexpr Gpa kData = kHdr + 0x1000;
constexpr Gpa kStatus = kHdr + 0x100;

class BlockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vmm-blk-test-XXXXXX";
    int fd = ::mkstemp(tmpl);
    ASSERT_GE(fd, 0);
    ::close(fd);
    path_ = tmpl;
    content_.resize(64 * 1024 + 100);  // 128 sectors and a partial one
    std::mt19937 rng(42);
    for (auto& b : content_) b = static_cast<uint8_t>(rng());
    write_file(content_);
  }
  void TearDown() override {
    harness_.reset();
    dev_.reset();
    ::unlink(path_.c_str());
  }
  void write_file(const std::vector<uint8_t>& v) {
    std::ofstream f(path_, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size()));
  }
  std::vector<uint8_t> file() const {
    std::ifstream f(path_, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), {}};
  }
  void start(bool readonly = false, std::string id = "") {
    auto d = BlockDevice::create({path_, readonly, id});
    ASSERT_TRUE(d.ok()) << d.error().to_string();
    dev_ = *d;
    harness_ = std::make_unique<DeviceHarness>(*dev_);
    ASSERT_TRUE(harness_->activate(kFeatures | (readonly ? kBlkFeatureRo : 0)).ok());
  }
  void header(Gpa at, uint32_t type, uint64_t sector) {
    std::vector<uint8_t> h(16, 0);
    std::memcpy(h.data(), &type, 4);
    std::memcpy(h.data() + 8, &sector, 8);
    harness_->write(at, h);
  }
  // Submits a chain on queue 0, notifies, waits; returns the used element.
  UsedElem run(const std::vector<MockBuf>& bufs) {
    auto& q = harness_->q(0);
    q.add_chain(bufs);
    uint16_t want = q.avail_idx();
    dev_->notify_queue(0);
    EXPECT_TRUE(harness_->wait_used(0, want));
    return q.used_elem(static_cast<uint16_t>((want - 1) % q.size()));
  }
  uint8_t status() { return harness_->read(kStatus, 1)[0]; }

  std::string path_;
  std::vector<uint8_t> content_;
  std::shared_ptr<BlockDevice> dev_;
  std::unique_ptr<DeviceHarness> harness_;
};

TEST_F(BlockTest, CapacityAndConfigSpace) {
  start();
  EXPECT_EQ(dev_->capacity_sectors(), 128u);  // the partial sector is not visible
  uint8_t cfg[8];
  dev_->read_config(0, cfg);
  uint64_t cap;
  std::memcpy(&cap, cfg, 8);
  EXPECT_EQ(cap, 128u);
  uint8_t blk[4];
  dev_->read_config(20, blk);
  EXPECT_EQ(blk[0] | (blk[1] << 8), 512);
  uint8_t past[4] = {9, 9, 9, 9};
  dev_->read_config(1000, past);
  EXPECT_EQ(past[0], 0);
  EXPECT_TRUE(dev_->features() & kBlkFeatureFlush);
  EXPECT_FALSE(dev_->features() & kBlkFeatureRo);
}

TEST_F(BlockTest, ReadSectors) {
  start();
  header(kHdr, kBlkTypeIn, 3);
  auto used = run({{kHdr, 16, false}, {kData, 4096, true}, {kStatus, 1, true}});
  EXPECT_EQ(used.len, 4097u);
  EXPECT_EQ(status(), kBlkStatusOk);
  auto got = harness_->read(kData, 4096);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), content_.begin() + 3 * 512));
}

TEST_F(BlockTest, ReadIntoManyBuffersAndIndirect) {
  start();
  header(kHdr, kBlkTypeIn, 0);
  std::vector<MockBuf> bufs = {{kHdr, 16, false}};
  for (int i = 0; i < 8; ++i) bufs.push_back({kData + 0x1000 * static_cast<uint64_t>(i), 512, true});
  bufs.push_back({kStatus, 1, true});
  auto& q = harness_->q(0);
  q.add_indirect_chain(kHdr + 0x20000, bufs);
  dev_->notify_queue(0);
  ASSERT_TRUE(harness_->wait_used(0, 1));
  EXPECT_EQ(q.used_elem(0).len, 8u * 512 + 1);
  EXPECT_EQ(status(), kBlkStatusOk);
  for (int i = 0; i < 8; ++i) {
    auto got = harness_->read(kData + 0x1000 * static_cast<uint64_t>(i), 512);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), content_.begin() + 512 * i)) << i;
  }
}

TEST_F(BlockTest, WriteWithHeaderAndDataInOneBuffer) {
  start();
  header(kHdr, kBlkTypeOut, 5);
  std::vector<uint8_t> data(1024, 0xab);
  harness_->write(kHdr + 16, data);
  auto used = run({{kHdr, 16 + 1024, false}, {kStatus, 1, true}});
  EXPECT_EQ(used.len, 1u);
  EXPECT_EQ(status(), kBlkStatusOk);
  auto f = file();
  EXPECT_TRUE(std::all_of(f.begin() + 5 * 512, f.begin() + 7 * 512, [](uint8_t b) { return b == 0xab; }));
  EXPECT_TRUE(std::equal(f.begin(), f.begin() + 5 * 512, content_.begin()));
  EXPECT_TRUE(std::equal(f.begin() + 7 * 512, f.end(), content_.begin() + 7 * 512));
  EXPECT_EQ(dev_->stats().bytes_written, 1024u);
}

TEST_F(BlockTest, WriteThenFlushThenReadInOneBatchKeepsOrder) {
  start();
  auto& q = harness_->q(0);
  header(kHdr, kBlkTypeOut, 10);
  harness_->write(kData, std::vector<uint8_t>(512, 0x5a));
  q.add_chain({{kHdr, 16, false}, {kData, 512, false}, {kStatus, 1, true}});
  header(kHdr + 0x40, kBlkTypeFlush, 0);
  q.add_chain({{kHdr + 0x40, 16, false}, {kStatus + 1, 1, true}});
  header(kHdr + 0x80, kBlkTypeIn, 10);
  q.add_chain({{kHdr + 0x80, 16, false}, {kData + 0x8000, 512, true}, {kStatus + 2, 1, true}});
  dev_->notify_queue(0);
  ASSERT_TRUE(harness_->wait_used(0, 3));
  EXPECT_EQ(q.used_elem(0).id, 0u);  // completions in submission order
  EXPECT_EQ(q.used_elem(1).id, 3u);
  EXPECT_EQ(q.used_elem(2).id, 5u);
  EXPECT_EQ(harness_->read(kStatus, 3), (std::vector<uint8_t>{0, 0, 0}));
  auto got = harness_->read(kData + 0x8000, 512);
  EXPECT_TRUE(std::all_of(got.begin(), got.end(), [](uint8_t b) { return b == 0x5a; }));
  EXPECT_EQ(dev_->stats().flushes, 1u);
  EXPECT_GE(harness_->used_irqs_.load(), 1);
}

TEST_F(BlockTest, ReadOnlyDiskRefusesWrites) {
  start(/*readonly=*/true);
  EXPECT_TRUE(dev_->features() & kBlkFeatureRo);
  header(kHdr, kBlkTypeOut, 0);
  harness_->write(kData, std::vector<uint8_t>(512, 0xff));
  auto used = run({{kHdr, 16, false}, {kData, 512, false}, {kStatus, 1, true}});
  EXPECT_EQ(used.len, 1u);
  EXPECT_EQ(status(), kBlkStatusIoErr);
  EXPECT_EQ(file(), content_);
  // Reads and flushes still work.
  header(kHdr, kBlkTypeIn, 0);
  run({{kHdr, 16, false}, {kData, 512, true}, {kStatus, 1, true}});
  EXPECT_EQ(status(), kBlkStatusOk);
  header(kHdr, kBlkTypeFlush, 0);
  run({{kHdr, 16, false}, {kStatus, 1, true}});
  EXPECT_EQ(status(), kBlkStatusOk);
}

TEST_F(BlockTest, GetIdAndUnsupportedType) {
  start(false, "disk-0");
  header(kHdr, kBlkTypeGetId, 0);
  auto used = run({{kHdr, 16, false}, {kData, 20, true}, {kStatus, 1, true}});
  EXPECT_EQ(used.len, 21u);
  EXPECT_EQ(status(), kBlkStatusOk);
  auto id = harness_->read(kData, 20);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(id.data())), "disk-0");
  header(kHdr, 11 /* DISCARD, not offered */, 0);
  run({{kHdr, 16, false}, {kData, 16, false}, {kStatus, 1, true}});
  EXPECT_EQ(status(), kBlkStatusUnsupp);
}

TEST_F(BlockTest, BadRequestsGetIoErrAndDeviceKeepsWorking) {
  start();
  struct Case {
    const char* what;
    uint32_t type;
    uint64_t sector;
    std::vector<MockBuf> bufs;
  };
  std::vector<Case> cases = {
      {"beyond capacity", kBlkTypeIn, 127, {{kHdr, 16, false}, {kData, 1024, true}, {kStatus, 1, true}}},
      {"sector overflow", kBlkTypeIn, ~0ULL, {{kHdr, 16, false}, {kData, 512, true}, {kStatus, 1, true}}},
      {"partial sector", kBlkTypeIn, 0, {{kHdr, 16, false}, {kData, 100, true}, {kStatus, 1, true}}},
      {"short header", kBlkTypeIn, 0, {{kHdr, 8, false}, {kData, 512, true}, {kStatus, 1, true}}},
      {"write beyond end", kBlkTypeOut, 128, {{kHdr, 16, false}, {kData, 512, false}, {kStatus, 1, true}}},
  };
  for (const auto& c : cases) {
    harness_->write(kStatus, {0x77});
    header(kHdr, c.type, c.sector);
    run(c.bufs);
    EXPECT_EQ(status(), kBlkStatusIoErr) << c.what;
  }
  // No status byte at all: completed with nothing written.
  header(kHdr, kBlkTypeIn, 0);
  EXPECT_EQ(run({{kHdr, 16, false}}).len, 0u);
  EXPECT_EQ(file(), content_);
  EXPECT_FALSE(dev_->broken());
  header(kHdr, kBlkTypeIn, 1);
  run({{kHdr, 16, false}, {kData, 512, true}, {kStatus, 1, true}});
  EXPECT_EQ(status(), kBlkStatusOk);
}

TEST_F(BlockTest, CorruptRingMakesDeviceNeedResetThenResetRecovers) {
  start();
  auto& q = harness_->q(0);
  q.set_avail_ring(0, 200);  // head index beyond the queue size
  q.set_avail_idx(1);
  dev_->notify_queue(0);
  ASSERT_TRUE(harness_->wait_needs_reset());
  EXPECT_TRUE(dev_->broken());
  EXPECT_GE(dev_->warnings(), 1u);
  // Loop in a chain after reset + re-activation: needs reset again.
  harness_.reset();
  harness_ = std::make_unique<DeviceHarness>(*dev_);
  ASSERT_TRUE(harness_->activate(kFeatures).ok());
  EXPECT_FALSE(dev_->broken());
  auto& q2 = harness_->q(0);
  q2.set_desc(0, kHdr, 16, kDescFNext, 1);
  q2.set_desc(1, kData, 512, kDescFNext | kDescFWrite, 0);
  q2.push_avail(0);
  dev_->notify_queue(0);
  ASSERT_TRUE(harness_->wait_needs_reset());
  // And a buffer outside guest memory.
  harness_.reset();
  harness_ = std::make_unique<DeviceHarness>(*dev_);
  ASSERT_TRUE(harness_->activate(kFeatures).ok());
  header(kHdr, kBlkTypeIn, 0);
  harness_->q(0).add_chain({{kHdr, 16, false}, {0xfffffffff000ULL, 4096, true}, {kStatus, 1, true}});
  dev_->notify_queue(0);
  ASSERT_TRUE(harness_->wait_needs_reset());
  EXPECT_EQ(file(), content_);
}

TEST_F(BlockTest, MissingFileIsAClearError) {
  auto d = BlockDevice::create({"/nonexistent/disk.img", false, ""});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().to_string().find("/nonexistent/disk.img"), std::string::npos);
  auto id = BlockDevice::create({path_, false, "this-id-is-longer-than-20"});
  EXPECT_FALSE(id.ok());
}

}  // namespace
}  // namespace vmm::virtio
