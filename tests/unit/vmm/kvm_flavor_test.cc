#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

#include "vmm/core/cpuid_probe.h"

namespace vmm {
namespace {

namespace fs = std::filesystem;

KvmFlavor flavor_with(std::initializer_list<const char*> modules) {
  std::string t = (fs::temp_directory_path() / "vmm-sysmod.XXXXXX").string();
  fs::path dir = ::mkdtemp(t.data());
  for (const char* m : modules) fs::create_directories(dir / m / "parameters");
  KvmFlavor f = detect_kvm_flavor(dir.string());
  fs::remove_all(dir);
  return f;
}

TEST(KvmFlavor, FromLoadedModules) {
  EXPECT_EQ(flavor_with({"kvm", "kvm_amd", "ccp"}), KvmFlavor::kSvm);
  EXPECT_EQ(flavor_with({"kvm", "kvm_intel"}), KvmFlavor::kVmx);
  // This project's build hosts: PVM wins whatever else is loaded.
  EXPECT_EQ(flavor_with({"kvm", "kvm_pvm"}), KvmFlavor::kPvm);
  EXPECT_EQ(flavor_with({"kvm", "kvm_intel", "kvm_pvm"}), KvmFlavor::kPvm);
  EXPECT_EQ(flavor_with({"kvm"}), KvmFlavor::kUnknown);
  EXPECT_EQ(detect_kvm_flavor("/nonexistent"), KvmFlavor::kUnknown);
  EXPECT_STREQ(kvm_flavor_name(KvmFlavor::kSvm), "kvm_amd");
}

}  // namespace
}  // namespace vmm
