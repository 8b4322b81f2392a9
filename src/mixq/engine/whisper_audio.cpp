#include "mixq/engine/whisper_audio.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/io/byte_cursor.h"
#include "mixq/io/mapped_file.h"

namespace mixq {

std::vector<float> read_wav_16k_mono(const std::filesystem::path& path) {
  const MappedFile f(path);
  ByteCursor in(f.bytes(), path.string() + ": not a 16 kHz mono 16-bit PCM WAV file");
  if (in.take_string(4, "the RIFF tag") != "RIFF") in.fail("no RIFF tag");
  in.read<uint32_t>("the RIFF size");
  if (in.take_string(4, "the WAVE tag") != "WAVE") in.fail("no WAVE tag");
  bool have_fmt = false;
  while (true) {
    const std::string id = in.take_string(4, "a chunk id");
    const auto size = in.read<uint32_t>("a chunk size");
    if (id == "fmt ") {
      if (size < 16) in.fail("a short fmt chunk");
      const auto body = in.take(size, "the fmt chunk");
      uint16_t format, channels, bits;
      uint32_t rate;
      std::memcpy(&format, body.data(), 2);
      std::memcpy(&channels, body.data() + 2, 2);
      std::memcpy(&rate, body.data() + 4, 4);
      std::memcpy(&bits, body.data() + 14, 2);
      if (format != 1 || channels != 1 || bits != 16 || rate != 16000) {
        in.fail(fmt::format("format {}, {} channels, {} bits, {} Hz (resample: ffmpeg -i IN -ar 16000 -ac 1 "
                            "-c:a pcm_s16le OUT.wav)",
                            format, channels, bits, rate));
      }
      have_fmt = true;
    } else if (id == "data") {
      if (!have_fmt) in.fail("a data chunk before the fmt chunk");
      const auto body = in.take(std::min<size_t>(size, in.remaining()) & ~size_t{1}, "the samples");
      std::vector<float> out(body.size() / 2);
      for (size_t i = 0; i < out.size(); ++i) {
        int16_t s;
        std::memcpy(&s, body.data() + 2 * i, 2);
        out[i] = static_cast<float>(s) / 32768.0f;
      }
      return out;
    } else {
      in.take(size + (size & 1), "a chunk");
    }
  }
}

std::vector<float> whisper_log_mel(const std::vector<float>& samples, const WhisperMelFilters& filters, int n_frames) {
  constexpr int kFft = 400, kHop = 160, kPad = kFft / 2;
  const int n_bins = kFft / 2 + 1;
  if (filters.n_fft != n_bins) {
    throw std::runtime_error(fmt::format("mel filters of {} bins: Whisper's front end needs {}", filters.n_fft, n_bins));
  }
  const size_t n = std::min<size_t>(samples.size(), static_cast<size_t>(n_frames) * kHop);
  // Reflect-pad in front (torch.stft's center=True), zeros behind.
  std::vector<float> padded(static_cast<size_t>(n_frames) * kHop + kFft, 0.0f);
  std::copy(samples.begin(), samples.begin() + static_cast<std::ptrdiff_t>(n), padded.begin() + kPad);
  for (int i = 1; i <= kPad && static_cast<size_t>(i) < n; ++i) padded[kPad - i] = samples[static_cast<size_t>(i)];
  // The DFT as a table: row k holds cos / sin of 2 pi k i / 400.
  std::vector<double> window(kFft), cosine(static_cast<size_t>(n_bins) * kFft), sine(cosine.size());
  for (int i = 0; i < kFft; ++i) window[i] = 0.5 * (1.0 - std::cos(2.0 * std::numbers::pi * i / kFft));
  for (int k = 0; k < n_bins; ++k) {
    for (int i = 0; i < kFft; ++i) {
      const double angle = 2.0 * std::numbers::pi * ((k * i) % kFft) / kFft;
      cosine[static_cast<size_t>(k) * kFft + i] = std::cos(angle);
      sine[static_cast<size_t>(k) * kFft + i] = std::sin(angle);
    }
  }
  std::vector<float> mel(static_cast<size_t>(filters.n_mel) * n_frames);
  std::vector<double> frame(kFft), power(n_bins);
  for (int t = 0; t < n_frames; ++t) {
    bool silent = true;
    for (int i = 0; i < kFft; ++i) {
      frame[i] = padded[static_cast<size_t>(t) * kHop + i] * window[i];
      silent = silent && frame[i] == 0.0;
    }
    for (int k = 0; k < n_bins && !silent; ++k) {
      const double* c = cosine.data() + static_cast<size_t>(k) * kFft;
      const double* sn = sine.data() + static_cast<size_t>(k) * kFft;
      double re = 0, im = 0;
      for (int i = 0; i < kFft; ++i) {
        re += frame[i] * c[i];
        im -= frame[i] * sn[i];
      }
      power[k] = re * re + im * im;
    }
    if (silent) std::fill(power.begin(), power.end(), 0.0);  // the zero padding: log10(1e-10)
    for (int m = 0; m < filters.n_mel; ++m) {
      double sum = 0;
      const float* w = filters.data.data() + static_cast<size_t>(m) * n_bins;
      for (int k = 0; k < n_bins; ++k) sum += w[k] * power[k];
      mel[static_cast<size_t>(m) * n_frames + t] = static_cast<float>(std::log10(std::max(sum, 1e-10)));
    }
  }
  const float top = *std::max_element(mel.begin(), mel.end()) - 8.0f;
  for (auto& v : mel) v = (std::max(v, top) + 4.0f) / 4.0f;
  return mel;
}

}  // namespace mixq
