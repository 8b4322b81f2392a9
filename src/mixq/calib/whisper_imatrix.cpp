#include "mixq/calib/whisper_imatrix.h"

#include <chrono>
#include <map>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/engine/whisper_audio.h"

namespace mixq {

WhisperImatrixResult collect_whisper_imatrix(WhisperModel& model, const std::vector<WhisperTestItem>& items,
                                             int threads, const std::function<void(size_t, size_t)>& on_utterance) {
  const auto start = std::chrono::steady_clock::now();
  struct Sums {
    std::vector<double> sum2;
    int64_t count = 0;
  };
  std::map<std::string, Sums> sums;
  model.set_activation_observer([&](const std::string& weight, const float* x, int64_t rows, int64_t cols) {
    Sums& s = sums[weight];
    if (s.sum2.empty()) s.sum2.assign(static_cast<size_t>(cols), 0.0);
    if (static_cast<int64_t>(s.sum2.size()) != cols) {
      throw std::logic_error(fmt::format("imatrix: '{}' was multiplied with rows of {} and of {} values", weight,
                                         s.sum2.size(), cols));
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = x + r * cols;
      for (int64_t j = 0; j < cols; ++j) s.sum2[j] += static_cast<double>(row[j]) * row[j];
    }
    s.count += rows;
  });
  WhisperImatrixResult res;
  try {
    for (size_t i = 0; i < items.size(); ++i) {
      const WhisperAudioState audio = model.encode(read_wav_16k_mono(items[i].audio), threads);
      res.decoder_tokens += static_cast<int64_t>(model.decode_greedy(audio, threads).tokens.size());
      if (on_utterance) on_utterance(i + 1, items.size());
    }
  } catch (...) {
    model.set_activation_observer({});
    throw;
  }
  model.set_activation_observer({});
  res.utterances = static_cast<int>(items.size());
  for (const auto& [name, s] : sums) {
    ImatrixSums out;
    out.in_sum2.assign(s.sum2.begin(), s.sum2.end());
    out.counts = {static_cast<float>(s.count)};
    std::vector<float> mean(s.sum2.size());
    for (size_t j = 0; j < mean.size(); ++j) mean[j] = static_cast<float>(s.sum2[j] / static_cast<double>(s.count));
    res.matrix.weights[name] = std::move(mean);
    res.matrix.sums[name] = std::move(out);
  }
  res.matrix.chunk_count = res.utterances;
  res.matrix.chunk_size = model.n_audio_ctx();
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return res;
}

}  // namespace mixq
