#include "mixq/convert/whisper_mel.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace mixq {

namespace {

// Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per
// factor 6.4), as librosa's hz_to_mel / mel_to_hz with htk=False.
constexpr double kFsp = 200.0 / 3;
constexpr double kMinLogHz = 1000.0;

double log_step() { return std::log(6.4) / 27.0; }

double hz_to_mel(double hz) {
  double mel = (hz - 0.0) / kFsp;
  if (hz >= kMinLogHz) mel = (kMinLogHz - 0.0) / kFsp + std::log(hz / kMinLogHz) / log_step();
  return mel;
}

double mel_to_hz(double mel) {
  const double min_log_mel = (kMinLogHz - 0.0) / kFsp;
  double hz = 0.0 + kFsp * mel;
  if (mel >= min_log_mel) hz = kMinLogHz * std::exp(log_step() * (mel - min_log_mel));
  return hz;
}

}  // namespace

WhisperMelFilters whisper_mel_filters(int n_mels, int sample_rate, int n_fft) {
  if (n_mels <= 0 || sample_rate <= 0 || n_fft <= 0) throw std::invalid_argument("mel filters need positive sizes");
  const int n_bins = n_fft / 2 + 1;
  // FFT bin centres: numpy's rfftfreq, i * (1 / (n * (1 / sr))).
  const double spacing = 1.0 / (static_cast<double>(n_fft) * (1.0 / static_cast<double>(sample_rate)));
  std::vector<double> fft_hz(static_cast<size_t>(n_bins));
  for (int j = 0; j < n_bins; ++j) fft_hz[static_cast<size_t>(j)] = static_cast<double>(j) * spacing;
  // n_mels + 2 band edges evenly spaced in mel from 0 Hz to the Nyquist frequency (numpy's linspace:
  // i * step + start, the last one exactly the end).
  const int n_edges = n_mels + 2;
  const double lo = hz_to_mel(0.0), hi = hz_to_mel(static_cast<double>(sample_rate) / 2);
  const double step = (hi - lo) / (n_edges - 1);
  std::vector<double> edge_hz(static_cast<size_t>(n_edges));
  for (int i = 0; i < n_edges; ++i) {
    const double mel = i == n_edges - 1 ? hi : static_cast<double>(i) * step + lo;
    edge_hz[static_cast<size_t>(i)] = mel_to_hz(mel);
  }
  WhisperMelFilters f;
  f.n_mel = n_mels;
  f.n_fft = n_bins;
  f.data.resize(static_cast<size_t>(n_mels) * n_bins);
  for (int i = 0; i < n_mels; ++i) {
    const double d0 = edge_hz[i + 1] - edge_hz[i], d1 = edge_hz[i + 2] - edge_hz[i + 1];
    // Slaney normalization: each triangle gets unit area (2 / bandwidth).
    const double norm = 2.0 / (edge_hz[i + 2] - edge_hz[i]);
    for (int j = 0; j < n_bins; ++j) {
      const double lower = -(edge_hz[i] - fft_hz[j]) / d0;
      const double upper = (edge_hz[i + 2] - fft_hz[j]) / d1;
      // librosa stores the triangle in float32 first, then scales it in place (float64 product,
      // rounded to float32 again).
      const float tri = static_cast<float>(std::max(0.0, std::min(lower, upper)));
      f.data[static_cast<size_t>(i) * n_bins + j] = static_cast<float>(static_cast<double>(tri) * norm);
    }
  }
  return f;
}

}  // namespace mixq
