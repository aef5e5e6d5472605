// A state tree with every kind of entry, nested sections and a pod, shared by
// the snapshot tests.
#pragma once

#include <cstdint>
#include <vector>

#include "vmm/snapshot/state_file.h"
#include "vmm/snapshot/state_tree.h"

namespace vmm::snapshot::testing {

struct FakeRegs {
  uint64_t rax, rbx, rip, rflags;
};

inline Section sample_tree() {
  Section root;
  Section& serial = root.add_section("serial0");
  serial.put_u8("dll", 0x0c);
  serial.put_u8("lcr", 0x03);
  serial.put_bool("thr_ipending", true);
  serial.put_bytes("rx_fifo", std::vector<uint8_t>{'h', 'i', '\n'});
  Section& virtio = root.add_section("virtio0");
  virtio.put_u32("status", 0xf);
  virtio.put_u64("features", 0x1'0000'0200ull);
  Section& q = virtio.add_section("queue1");
  q.put_u16("size", 256);
  q.put_u16("next_avail", 65535);
  q.put_bool("ready", false);
  Section& vcpu = root.add_section("vcpu0");
  vcpu.add_section("regs").put_pod("regs", FakeRegs{1, 2, 0xffffffff81000000ull, 2});
  vcpu.put_i64("tsc_offset", -123456789);
  vcpu.put_string("mp_state", "runnable");
  vcpu.put_bytes("empty", {});
  root.put_u64("clock", ~uint64_t{0});
  return root;
}

inline StateHeader sample_header() {
  StateHeader h;
  h.vmm_version = "0.1.0";
  h.cpu_template = "host";
  h.created_unix = 1700000000;
  h.config = {{"memory", "536870912"}, {"vcpus", "1"}, {"disk0", "raw,rw"}};
  return h;
}

}  // namespace vmm::snapshot::testing
