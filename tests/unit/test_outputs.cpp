// Output safety (io/atomic_file.h) and the reliability cases of issue 12: every writer goes through
// AtomicFile; same-file guard; non-regular targets; interruptions; resource limits; bad options.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "mixq/io/atomic_file.h"
#include "mixq/io/gguf.h"
#include "mixq/io/tensor_check.h"
#include "mixq/util/json_file.h"
#include "mixq/util/thread_pool.h"
#include "test_support.h"

namespace mixq {
namespace {

namespace fs = std::filesystem;

std::string q(const fs::path& p) { return fmt::format("'{}'", p.string()); }

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void spit(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

bool is_link(const fs::path& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
}

class Outputs : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir() / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  // The bundled stories260K, copied into the test directory.
  fs::path model() {
    const fs::path src = test::source_dir() / "assets" / "stories260K" / "stories260K-f32.gguf";
    const fs::path m = dir_ / "s.gguf";
    if (!fs::exists(m)) fs::copy_file(src, m);
    return m;
  }
  fs::path text() {
    const fs::path t = dir_ / "text.txt";
    std::string s;
    for (int i = 0; i < 200; ++i) s += "Once upon a time, there was a little girl named Lily. She loved to play outside. ";
    if (!fs::exists(t)) spit(t, s);
    return t;
  }
  fs::path dir_;
};

// ---- item 6: one atomic writer ----

TEST_F(Outputs, JsonWriterNeverFollowsAPlantedTemporaryName) {
  // The old writer used a fixed PATH.tmp: a symlink planted there redirected the write.
  const fs::path victim = dir_ / "victim.txt", out = dir_ / "plan.json";
  spit(victim, "precious");
  fs::create_symlink(victim, out.string() + ".tmp");
  write_json_file(out, nlohmann::ordered_json{{"a", 1}});
  EXPECT_EQ(slurp(victim), "precious");
  EXPECT_EQ(read_json_file(out, "plan")["a"], 1);
}

TEST_F(Outputs, ConcurrentWritersOfOnePathLeaveOneCompleteFile) {
  const fs::path out = dir_ / "same.json";
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        nlohmann::ordered_json j;
        j["writer"] = t;
        j["payload"] = std::string(static_cast<size_t>(1000 + 997 * t), static_cast<char>('a' + t));
        try {
          write_json_file(out, j);
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  const auto j = read_json_file(out, "result");
  const int t = j["writer"].get<int>();
  EXPECT_EQ(j["payload"].get<std::string>(), std::string(static_cast<size_t>(1000 + 997 * t), static_cast<char>('a' + t)));
  EXPECT_EQ(test::files_in(dir_).size(), 1u);  // no temporary file left
  EXPECT_EQ(live_temporary_count(), 0u);
}

TEST_F(Outputs, FailedWriteLeavesNothingAndUncommittedFileIsRemoved) {
  {
    AtomicFile f(dir_ / "x.bin");
    f.write("abc");
    EXPECT_TRUE(fs::exists(f.writing_path()));
    EXPECT_EQ(live_temporary_count(), 1u);
  }
  EXPECT_TRUE(test::files_in(dir_).empty());
  EXPECT_EQ(live_temporary_count(), 0u);
  // /dev/full is written through (a device) and every write fails: the error must surface.
  AtomicFile full("/dev/full");
  EXPECT_TRUE(full.writes_through());
  EXPECT_THROW(
      {
        full.write(std::string(4 << 20, 'x'));
        full.commit();
      },
      std::runtime_error);
}

// Large files go to disk with direct I/O from two alternating aligned buffers (a writer thread),
// the last partial block through the page cache; where the file system refuses O_DIRECT (tmpfs)
// everything goes through the cache. Either way the file holds exactly the bytes written, in
// spans of every kind: single bytes, unaligned sizes, spans larger than the buffers.
TEST_F(Outputs, LargeFilesAreByteExactWithAndWithoutDirectIo) {
  std::vector<char> bytes(23 << 20);
  std::mt19937 rng(7);
  for (auto& b : bytes) b = static_cast<char>(rng());
  const std::vector<size_t> spans = {1, 4095, (4 << 20) + 3, 100, 9 << 20, 17, 4 << 20, 5000, 1};
  std::vector<fs::path> dirs = {dir_};
  if (fs::is_directory("/dev/shm")) dirs.push_back(fs::path("/dev/shm") / ("mixq-test-" + std::to_string(::getpid())));
  for (const fs::path& d : dirs) {
    fs::create_directories(d);
    const fs::path out = d / "big.bin";
    size_t at = 0;
    bool direct = false;
    {
      AtomicFile f(out);
      direct = f.writes_directly();
      for (int round = 0; round < 2; ++round) {
        for (const size_t n : spans) {
          const size_t take = std::min(n, bytes.size() - at);
          f.write(bytes.data() + at, take);
          at += take;
        }
      }
      f.commit();
    }
    std::printf("%s: direct I/O %s, %zu bytes\n", d.c_str(), direct ? "on" : "off", at);
    ASSERT_EQ(fs::file_size(out), at);
    std::ifstream in(out, std::ios::binary);
    std::vector<char> back(at);
    in.read(back.data(), static_cast<std::streamsize>(at));
    EXPECT_TRUE(std::equal(back.begin(), back.end(), bytes.begin())) << d;
    EXPECT_EQ(test::files_in(d).size(), 1u);  // no temporary file left
    if (d != dir_) fs::remove_all(d);
  }
  EXPECT_EQ(live_temporary_count(), 0u);
}

// A write that fails part-way in direct mode (on the writer thread) fails the file at the next
// hand-over or at commit, and nothing is left behind. A child process under a 1 MB file-size
// limit writes 12 MB.
TEST_F(Outputs, DirectWriteFailureIsAnErrorAndLeavesNothing) {
  const fs::path out = dir_ / "limited.bin";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    const rlimit lim{1 << 20, 1 << 20};
    ::setrlimit(RLIMIT_FSIZE, &lim);
    int code = 2;
    try {
      AtomicFile f(out);
      const std::vector<char> chunk(3 << 20, 'z');
      for (int i = 0; i < 4; ++i) f.write(chunk.data(), chunk.size());
      f.commit();
    } catch (const std::runtime_error& e) {
      code = std::string(e.what()).find("cannot write") != std::string::npos ? 0 : 3;
    }
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: no error, 3: another message";
  EXPECT_TRUE(test::files_in(dir_).empty());
}

TEST_F(Outputs, ReportJsonFailuresAreErrors) {
  const fs::path m = model();
  // Missing directory: refused before any work, with no model written.
  auto r = test::run_cli("quantize " + q(m) + " " + q(dir_ / "o.gguf") + " q8_0 --report-json " +
                         q(dir_ / "no" / "r.json"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("does not exist"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "o.gguf"));
  // A full disk (/dev/full is written through): the write error is an error, not exit 0.
  r = test::run_cli("quantize " + q(m) + " " + q(dir_ / "o.gguf") + " q8_0 --report-json /dev/full");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("No space left"), std::string::npos) << r.output;
  // /dev/null stays the device it is.
  r = test::run_cli("quantize " + q(m) + " " + q(dir_ / "o2.gguf") + " q8_0 --report-json /dev/null");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  struct stat st;
  ASSERT_EQ(::stat("/dev/null", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
}

// ---- item 4: targets that are not regular files ----

TEST_F(Outputs, DeviceAndFifoTargetsAreWrittenThroughOthersRefused) {
  EXPECT_EQ(output_kind_of_mode(S_IFREG | 0644), OutputKind::Replace);
  EXPECT_EQ(output_kind_of_mode(S_IFCHR | 0666), OutputKind::WriteThrough);
  EXPECT_EQ(output_kind_of_mode(S_IFIFO | 0644), OutputKind::WriteThrough);
  EXPECT_EQ(output_kind_of_mode(S_IFBLK | 0660), OutputKind::Refuse);
  EXPECT_EQ(output_kind_of_mode(S_IFDIR | 0755), OutputKind::Refuse);
  EXPECT_EQ(output_kind_of_mode(S_IFSOCK | 0755), OutputKind::Refuse);
  EXPECT_EQ(classify_output("/dev/null").kind, OutputKind::WriteThrough);
  EXPECT_EQ(classify_output(dir_).kind, OutputKind::Refuse);
  EXPECT_THROW(AtomicFile{dir_}, std::runtime_error);
}

TEST_F(Outputs, SymlinkTargetIsFollowedAndKept) {
  const fs::path m = model();
  const fs::path link = dir_ / "link.gguf", real = dir_ / "real.gguf", plain = dir_ / "plain.gguf";
  fs::create_symlink("real.gguf", link);  // relative, dangling until written
  auto r = test::run_cli("quantize " + q(m) + " " + q(link) + " q8_0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = test::run_cli("quantize " + q(m) + " " + q(plain) + " q8_0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(is_link(link));
  EXPECT_EQ(slurp(real), slurp(plain));
  // Written again through the now non-dangling link, as plan writes JSON.
  spit(dir_ / "m.json", "{}");
  fs::create_symlink("real.json", dir_ / "p.json");
  write_json_file(dir_ / "p.json", nlohmann::ordered_json{{"k", 2}});
  write_json_file(dir_ / "p.json", nlohmann::ordered_json{{"k", 3}});
  EXPECT_TRUE(is_link(dir_ / "p.json"));
  EXPECT_EQ(read_json_file(dir_ / "real.json", "x")["k"], 3);
}

TEST_F(Outputs, FifoTargetIsWrittenThroughAndStaysAFifo) {
  const fs::path m = model();
  const fs::path fifo = dir_ / "pipe", cap = dir_ / "captured", plain = dir_ / "plain.gguf";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  ASSERT_EQ(test::run_cli("quantize " + q(m) + " " + q(plain) + " q8_0").exit_code, 0);
  // A reader that gives up after 20 s, so a writer that never opens the FIFO fails the test
  // instead of hanging it.
  const std::string cmd = fmt::format("timeout 20 cat {} > {} & '{}' quantize {} {} q8_0 >/dev/null 2>&1; st=$?; wait; exit $st",
                                      q(fifo), q(cap), MIXQ_CLI_PATH, q(m), q(fifo));
  const int rc = std::system(cmd.c_str());
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << rc;
  struct stat st;
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(slurp(cap), slurp(plain));
}

// ---- item 5: outputs that name inputs ----

TEST_F(Outputs, AnOutputThatIsAnInputIsRefusedBeforeAnyWork) {
  const fs::path m = model();
  const std::string original = slurp(m);
  fs::create_hard_link(m, dir_ / "hard.gguf");
  fs::create_symlink(m, dir_ / "sym.gguf");
  const fs::path t = text();
  spit(dir_ / "m.json", "{\"not\": \"read\"}");
  spit(dir_ / "base.kld", "x");
  const std::vector<std::string> cases = {
      "convert " + q(m) + " " + q(m) + " --outtype f16",
      "convert " + q(m) + " " + q(dir_ / "hard.gguf") + " --outtype f16",
      "convert " + q(m) + " " + q(dir_ / "sym.gguf"),
      "quantize " + q(m) + " " + q(dir_ / "hard.gguf") + " q8_0",
      "quantize " + q(m) + " " + q(dir_ / "o.gguf") + " q8_0 --report-json " + q(m),
      "quantize " + q(m) + " " + q(dir_ / "o.gguf") + " --target-bpw 5 -f " + q(t) + " --save-plan " + q(t),
      "quantize " + q(m) + " " + q(dir_ / "o.gguf") + " --target-bpw 5 -f " + q(t) + " --save-measurement " + q(m),
      "imatrix " + q(m) + " -f " + q(t) + " -o " + q(m),
      "imatrix " + q(m) + " -f " + q(t) + " -o " + q(t),
      "measure " + q(m) + " -f " + q(t) + " -o " + q(m),
      "measure " + q(m) + " -f " + q(t) + " --save-imatrix " + q(dir_ / "sym.gguf"),
      "measure --merge " + q(dir_ / "m.json") + " -o " + q(dir_ / "m.json"),
      "kld " + q(m) + " -f " + q(t) + " --save-base " + q(m),
      "kld " + q(m) + " --base-logits " + q(dir_ / "base.kld") + " -f " + q(t) + " --save-base " + q(dir_ / "base.kld"),
      "plan " + q(dir_ / "m.json") + " --target-bpw 4 -o " + q(dir_ / "m.json"),
  };
  for (const auto& args : cases) {
    const auto r = test::run_cli(args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("is the same file as"), std::string::npos) << args << "\n" << r.output;
  }
  EXPECT_EQ(slurp(m), original);
  EXPECT_EQ(slurp(dir_ / "m.json"), "{\"not\": \"read\"}");
  EXPECT_EQ(slurp(dir_ / "base.kld"), "x");
  // Two outputs naming one file, before it exists.
  const auto r = test::run_cli("quantize " + q(m) + " " + q(dir_ / "n.gguf") + " q8_0 --report-json " + q(dir_ / "n.gguf"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("are the same file"), std::string::npos) << r.output;
}

TEST_F(Outputs, SafetensorsDirectoryCountsWithEveryFileInIt) {
  fs::create_directories(dir_ / "hf");
  spit(dir_ / "hf" / "config.json", "{}");
  spit(dir_ / "hf" / "model.safetensors", "weights");
  const auto r = test::run_cli("convert " + q(dir_ / "hf") + " " + q(dir_ / "hf" / "model.safetensors"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("is the same file as INPUT"), std::string::npos) << r.output;
  EXPECT_EQ(slurp(dir_ / "hf" / "model.safetensors"), "weights");
}

// ---- item 7: interruptions and stale temporaries ----

TEST_F(Outputs, SignalHandlerRemovesEveryLiveTemporary) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    install_interrupt_cleanup();
    AtomicFile f(dir_ / "out.gguf");
    f.write(std::string(3 << 20, 'x'));  // past the buffer: the temporary file has data
    TemporaryPath scratch(dir_ / "out.gguf", "-src.gguf");
    spit(scratch.path(), "converted input");
    ::raise(SIGTERM);
    ::_exit(0);  // not reached: the handler exits
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGTERM);
  EXPECT_TRUE(test::files_in(dir_).empty()) << fmt::format("{}", fmt::join(test::files_in(dir_), ", "));
}

TEST_F(Outputs, InterruptedOneStepQuantizeOfLlama2cLeavesNothing) {
  MIXQ_REQUIRE_SHARED("stories260K/stories260K.bin");
  const fs::path data = test::shared_data_dir() / "stories260K";
  const fs::path work = dir_ / "work";
  fs::create_directories(work);
  fs::copy_file(data / "stories260K.bin", work / "stories260K.bin");
  fs::copy_file(data / "tok512.bin", work / "tokenizer.bin");
  const fs::path t = text();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1);
    ::dup2(null, 2);
    const std::string in = (work / "stories260K.bin").string(), out = (work / "o.gguf").string(), f = t.string();
    ::execl(MIXQ_CLI_PATH, "mixq", "quantize", in.c_str(), out.c_str(), "--target-bpw", "5", "-f", f.c_str(),
            "--chunks", "64", "-t", "1", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Interrupt once the converted input exists (the measure step runs for seconds after it).
  bool seen = false;
  for (int i = 0; i < 4000 && !seen; ++i) {
    for (const auto& name : test::files_in(work)) seen |= name.find("-src") != std::string::npos;
    if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_TRUE(seen) << "the converted input never appeared";
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ::kill(child, SIGINT);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 130) << status;
  auto names = test::files_in(work);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"stories260K.bin", "tokenizer.bin"}));
}

TEST_F(Outputs, StaleTemporariesOfDeadProcessesAreReportedThenCleaned) {
  const fs::path m = model();
  const pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ::waitpid(dead, nullptr, 0);
  const fs::path stale = dir_ / fmt::format(".o.gguf.mixq-tmp-{}-0", dead);
  const fs::path old_scheme = dir_ / fmt::format("o.gguf.mixq-src-{}.gguf", dead);
  const fs::path live = dir_ / fmt::format(".o.gguf.mixq-tmp-{}-0", ::getpid());
  for (const auto& p : {stale, old_scheme, live}) spit(p, "partial");
  auto r = test::run_cli("quantize " + q(m) + " " + q(dir_ / "o.gguf") + " q8_0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(stale.filename().string()), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(old_scheme.filename().string()), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(live.filename().string()), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--clean-stale"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(stale));
  r = test::run_cli("quantize " + q(m) + " " + q(dir_ / "o.gguf") + " q8_0 --clean-stale");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_FALSE(fs::exists(old_scheme));
  EXPECT_TRUE(fs::exists(live));  // a running process's file is never touched
}

// ---- item 8: deep JSON ----

TEST_F(Outputs, DeeplyNestedJsonIsAnErrorNotAStackOverflow) {
  const std::string deep = "{\"8bit_layers\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_THROW(parse_json_text<nlohmann::ordered_json>(deep, "test"), std::runtime_error);
  EXPECT_NO_THROW(parse_json_text<nlohmann::ordered_json>(std::string(60, '[') + std::string(60, ']'), "test"));
  spit(dir_ / "deep.json", deep);
  const fs::path m = model();
  const auto r = test::run_cli("quantize " + q(m) + " " + q(dir_ / "o.gguf") + " q8_0 --config " + q(dir_ / "deep.json"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("nests deeper than"), std::string::npos) << r.output;
  // Measurements and plans go through the same reader.
  spit(dir_ / "m.json", std::string(100000, '[') + std::string(100000, ']'));
  const auto p = test::run_cli("plan " + q(dir_ / "m.json") + " --target-bpw 4 -o " + q(dir_ / "p.json"));
  EXPECT_EQ(p.exit_code, 1) << p.output;
  EXPECT_NE(p.output.find("nests deeper than"), std::string::npos) << p.output;
}

// ---- item 9: threads ----

// AddressSanitizer reserves terabytes of address space for its shadow memory at start, so a new
// process under an address-space limit cannot even start in the sanitizer build (test.sh's
// build-asan): the CLI run under `ulimit -v` below is made in the normal build only. (The forked
// child of the ThreadPool test sets its limit after the shadow is mapped, and runs in both.)
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif

TEST_F(Outputs, ThreadPoolThatCannotStartItsThreadsFailsCleanly) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::alarm(20);  // a hang shows as SIGALRM
    // Little address space beyond what is mapped now: thread stacks (8 MiB each) run out fast.
    std::ifstream statm("/proc/self/statm");
    long pages = 0;
    statm >> pages;
    const rlim_t limit = static_cast<rlim_t>(pages) * static_cast<rlim_t>(::sysconf(_SC_PAGESIZE)) + (64u << 20);
    const rlimit rl{limit, limit};
    ::setrlimit(RLIMIT_AS, &rl);
    try {
      ThreadPool pool(200);
      ::_exit(2);  // all started: the limit did not bite
    } catch (const std::runtime_error& e) {
      ::_exit(std::strstr(e.what(), "cannot start thread") ? 0 : 3);
    } catch (...) {
      ::_exit(4);
    }
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_THROW(ThreadPool(kMaxThreads + 1), std::runtime_error);
}

TEST_F(Outputs, ThreadCountIsCappedWithAClearError) {
  const fs::path m = model(), t = text();
  for (const std::string& args : {"perplexity " + q(m) + " -f " + q(t) + " -c 64 --chunks 1 -t 100000",
                                 "perplexity " + q(m) + " -f " + q(t) + " -c 64 --chunks 1 -t -3",
                                 "generate " + q(m) + " -p Once -n 2 -t 5000"}) {
    const auto r = test::run_cli(args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("-t "), std::string::npos) << args << "\n" << r.output;
  }
  // Under an address-space limit a large -t is a clear error, not a hang.
  if (kAddressSanitizer) return;
  const auto r = test::run_cli("perplexity " + q(m) + " -f " + q(t) + " -c 64 --chunks 2 -t 500", "ulimit -v 1500000;");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("cannot start thread"), std::string::npos) << r.output;
}

// ---- item 11: linear writer bookkeeping ----

TEST_F(Outputs, WriterWithManyKeysAndTensorsIsLinear) {
  // Quadratic bookkeeping took 6.4 s for 40,000 keys: 60,000 keys and 60,000 tensors would take
  // about 30 s to write, and the lookups below would add more; linear, all of it takes about a
  // second (the limits leave room for a loaded machine).
  const auto start = std::chrono::steady_clock::now();
  GgufWriter w(dir_ / "many.gguf");
  for (int i = 0; i < 60000; ++i) w.set(fmt::format("k.{}", i), GgufValue::u32(static_cast<uint32_t>(i)));
  w.set("k.77", GgufValue::u32(7));  // replacing keeps the position
  for (int i = 0; i < 60000; ++i) w.add_tensor(fmt::format("t.{}", i), {1}, TypeId::F32);
  EXPECT_THROW(w.add_tensor("t.5", {1}, TypeId::F32), GgufError);
  const float one = 1.0f;
  for (int i = 0; i < 60000; ++i) w.write_tensor_data({reinterpret_cast<const uint8_t*>(&one), 4});
  w.finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 8.0);
  const GgufFile f = GgufFile::open(dir_ / "many.gguf");
  EXPECT_EQ(f.metadata().size(), 60000u);
  EXPECT_EQ(f.metadata()[77].key, "k.77");
  EXPECT_EQ(f.metadata()[77].value.as_uint(), 7u);
  EXPECT_EQ(f.tensors().size(), 60000u);
  // Lookups by name, once per key and tensor as the commands do, stay linear too.
  size_t found = 0;
  for (int i = 0; i < 60000; ++i) {
    found += f.find(fmt::format("k.{}", i)) != nullptr;
    found += f.find_tensor(fmt::format("t.{}", i)) != nullptr;
  }
  EXPECT_EQ(found, 120000u);
  EXPECT_EQ(f.find("k.60000"), nullptr);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 12.0);
}

// ---- item 12: options and inputs that used to pass silently ----

TEST_F(Outputs, BadCountsAndSamplingOptionsAreRefused) {
  const fs::path m = model(), t = text();
  spit(dir_ / "m.json", "{}");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"perplexity " + q(m) + " -f " + q(t) + " -c 64 --chunks -1", "--chunks -1"},
      {"imatrix " + q(m) + " -f " + q(t) + " -c 64 --chunks -2 -o " + q(dir_ / "i.gguf"), "--chunks -2"},
      {"measure " + q(m) + " -f " + q(t) + " --chunks -1 -o " + q(dir_ / "mm.json"), "--chunks -1"},
      {"generate " + q(m) + " -p Once --temp nan", "--temp nan"},
      {"generate " + q(m) + " -p Once --top-p -1", "--top-p -1"},
      {"generate " + q(m) + " -p Once --top-k -5", "--top-k -5"},
      {"plan " + q(dir_ / "m.json") + " --target-size 1e300", "beyond any file"},
      {"plan " + q(dir_ / "m.json") + " --target-size inf", "size 'inf'"},
      {"plan " + q(dir_ / "m.json") + " --target-size 2e19", "beyond any file"},
      {"plan " + q(dir_ / "m.json") + " --target-bpw inf", "--target-bpw inf"},
      {"perplexity " + q(m) + " -f " + q(dir_) + " -c 64", "is a directory"},
      {"kld " + q(m) + " -f " + q(dir_) + " --save-base " + q(dir_ / "b.kld"), "is a directory"},
  };
  for (const auto& [args, expect] : cases) {
    const auto r = test::run_cli(args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(expect), std::string::npos) << args << "\n" << r.output;
    EXPECT_EQ(r.output.find("budget 0"), std::string::npos) << args << "\n" << r.output;
  }
  EXPECT_FALSE(fs::exists(dir_ / "b.kld"));
}

TEST_F(Outputs, GenerateWithAHugeTokenCountStopsAtTheContext) {
  const fs::path m = model();
  const auto r = test::run_cli("generate " + q(m) + " -p Once -n 2147483647 --temp 0 -t 1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("generation:"), std::string::npos) << r.output;
}

TEST_F(Outputs, NonFiniteWeightsNameTheTensorAndFail) {
  const fs::path m = model(), t = text(), bad = dir_ / "nan.gguf";
  {
    const GgufFile src = GgufFile::open(m);
    GgufWriter w(bad, src.alignment());
    w.copy_metadata(src);
    for (const auto& tt : src.tensors()) w.add_tensor(tt.name, tt.shape, tt.type->id);
    for (const auto& tt : src.tensors()) {
      std::vector<uint8_t> b(tt.bytes().begin(), tt.bytes().end());
      if (tt.name == "blk.1.ffn_up.weight") {
        ASSERT_EQ(tt.type->id, TypeId::F32);
        const float nan = std::nanf("");
        std::memcpy(b.data() + 4 * 100, &nan, 4);
      }
      w.write_tensor_data(b);
    }
    w.finish();
  }
  const auto hit = find_non_finite_tensor(GgufFile::open(bad));
  ASSERT_TRUE(hit.has_value());
  EXPECT_NE(hit->find("blk.1.ffn_up.weight"), std::string::npos) << *hit;
  EXPECT_FALSE(find_non_finite_tensor(GgufFile::open(m)).has_value());
  for (const std::string& args : {"perplexity " + q(bad) + " -f " + q(t) + " -c 64 --chunks 1",
                                 "kld " + q(bad) + " --base " + q(m) + " -f " + q(t) + " -c 64 --chunks 1"}) {
    const auto r = test::run_cli(args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("tensor 'blk.1.ffn_up.weight' (f32) holds NaN"), std::string::npos) << args << "\n" << r.output;
  }
}

// ---- item 13: llama-quantize's argument order ----

TEST_F(Outputs, TensorTypeBeforeThePositionalsAsLlamaQuantizeTakesIt) {
  const fs::path m = model(), out = dir_ / "o.gguf";
  const auto r = test::run_cli("quantize --tensor-type attn_v=q8_0 --tensor-type ffn_up=q8_0 " + q(m) + " " + q(out) +
                               " q4_0 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const GgufFile f = GgufFile::open(out);
  EXPECT_EQ(f.find_tensor("blk.0.attn_v.weight")->type->id, TypeId::Q8_0);
  EXPECT_EQ(f.find_tensor("blk.0.attn_q.weight")->type->id, TypeId::Q4_0);
  EXPECT_EQ(f.find_tensor("blk.0.ffn_up.weight")->type->id, TypeId::Q8_0);
}

}  // namespace
}  // namespace mixq
