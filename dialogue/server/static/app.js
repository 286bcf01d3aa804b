// The CSM server's web page. It is a client of the public HTTP API and of nothing else: every
// request below is one that curl or the openai package could make (see the README's server
// section). No build step, no library, nothing fetched from outside this server.

const SAMPLE_RATE = 24000; // the API's "pcm": 16-bit little-endian mono samples at 24 kHz
const FRAME_SECONDS = 0.08; // one Mimi frame; the server counts audio in frames (usage.output_tokens)
const KEY_STORE = "csm-api-key"; // sessionStorage: this tab only

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

// ---------------------------------------------------------------------------------------------
// The API: fetch with the key in an Authorization header (never in a URL), errors as the server
// words them ({"error": {"message", "type", "param", "code"}}).

class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

let apiKey = sessionStorage.getItem(KEY_STORE) || "";
let keyRequest = null;

function jsonBody(body) {
  // Seeds go up to 2^63-1, past what a JS number holds exactly: a seed typed as digits is sent
  // as those digits (anything else as the text typed, for the server to refuse in its words).
  return JSON.stringify(body).replace(/"seed":"(-?\d+)"/, '"seed":$1');
}

async function readError(res) {
  let message = `${res.status} ${res.statusText}`.trim();
  let code = null;
  let param = null;
  try {
    const body = await res.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
      param = body.error.param || null;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(res.status, message, code, param);
}

async function api(path, { method = "GET", json, form, signal } = {}) {
  for (;;) {
    const headers = {};
    if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = jsonBody(json);
    } else if (form) {
      body = form;
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body, signal, cache: "no-store" });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, `the server cannot be reached (${err.message})`, "network_error");
    }
    if (res.status === 401) {
      const error = await readError(res);
      await askForKey(apiKey ? error.message : "");
      continue; // again, with the key
    }
    if (!res.ok) throw await readError(res);
    return res;
  }
}

function askForKey(message) {
  if (!keyRequest) {
    keyRequest = new Promise((resolve) => {
      const dialog = $("key-dialog");
      const form = $("key-form");
      showError($("key-error"), message ? new ApiError(401, message) : null);
      form.onsubmit = (event) => {
        event.preventDefault();
        apiKey = $("key-input").value.trim();
        if (!apiKey) return;
        sessionStorage.setItem(KEY_STORE, apiKey);
        $("key-forget").hidden = false;
        dialog.close();
        keyRequest = null;
        resolve();
      };
      dialog.oncancel = (event) => event.preventDefault(); // the page cannot work without it
      if (!dialog.open) dialog.showModal();
      $("key-input").focus();
    });
  }
  return keyRequest;
}

function forgetKey() {
  apiKey = "";
  sessionStorage.removeItem(KEY_STORE);
  $("key-forget").hidden = true;
  $("key-input").value = "";
  init();
}

function showError(el, err) {
  if (!err) {
    el.hidden = true;
    el.textContent = "";
    return;
  }
  el.textContent = err.message;
  if (err.status || err.code) {
    const code = document.createElement("span");
    code.className = "code";
    code.textContent = [err.status || "", err.code || ""].join(" ").trim();
    el.append(code);
  }
  el.hidden = false;
}

function report(el) {
  // What a failed action shows: the server's own message (aborts are the user's doing).
  return (err) => {
    if (err && err.name === "AbortError") return;
    if (!(err instanceof ApiError)) console.warn(err);
    showError(el, err instanceof ApiError ? err : new ApiError(0, String(err.message || err)));
  };
}

// ---------------------------------------------------------------------------------------------
// Audio: one AudioContext at the API's rate; streamed chunks are queued back to back as they come.

class Player {
  constructor() {
    this.ctx = null;
    this.sources = new Set();
    this.next = 0;
    this.gaps = 0;
  }

  context() {
    if (!this.ctx) this.ctx = new AudioContext({ sampleRate: SAMPLE_RATE, latencyHint: "interactive" });
    if (this.ctx.state === "suspended") this.ctx.resume();
    return this.ctx;
  }

  stop() {
    for (const source of this.sources) {
      try { source.stop(); } catch { /* already over */ }
    }
    this.sources.clear();
    this.next = 0;
    this.gaps = 0;
  }

  play(buffer, when) {
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.ctx.destination);
    source.start(when);
    this.sources.add(source);
    return new Promise((resolve) => {
      source.onended = () => { this.sources.delete(source); resolve(); };
    });
  }

  // Queue one chunk (Float32Array) after the previous one; a chunk that comes after the
  // previous one has finished playing leaves a gap (the server was slower than real time).
  queue(samples) {
    const ctx = this.context();
    const buffer = ctx.createBuffer(1, samples.length, SAMPLE_RATE);
    buffer.copyToChannel(samples, 0);
    const earliest = ctx.currentTime + 0.05;
    if (this.next && this.next < earliest) this.gaps += 1;
    const start = Math.max(this.next, earliest);
    this.next = start + buffer.duration;
    this.play(buffer, start);
  }

  // Play a whole file (WAV bytes) now: {duration, ended}.
  async playFile(bytes) {
    this.stop();
    const ctx = this.context();
    const buffer = await ctx.decodeAudioData(bytes);
    return { duration: buffer.duration, ended: this.play(buffer, ctx.currentTime + 0.02) };
  }
}

const player = new Player();

function base64Bytes(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i += 1) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function pcm16(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.byteLength >> 1);
  for (let i = 0; i < out.length; i += 1) out[i] = view.getInt16(2 * i, true) / 32768;
  return out;
}

function wavBlob(chunks, rate) {
  // 16-bit mono WAV of Float32Array chunks.
  const count = chunks.reduce((n, c) => n + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * count));
  const text = (at, s) => { for (let i = 0; i < s.length; i += 1) view.setUint8(at + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * count, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * count, true);
  let at = 44;
  for (const chunk of chunks) {
    for (const x of chunk) {
      view.setInt16(at, Math.max(-32768, Math.min(32767, Math.round(x * 32767))), true);
      at += 2;
    }
  }
  return new Blob([view], { type: "audio/wav" });
}

// A waveform of the audio received so far: min/max per 10 ms, chunk boundaries as thin lines.
class Wave {
  constructor(canvas) {
    this.canvas = canvas;
    this.reset(0);
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  reset(expectedSeconds) {
    this.block = SAMPLE_RATE / 100;
    this.peaks = [];
    this.bounds = [];
    this.span = Math.ceil((expectedSeconds || 0) * 100);
    this.draw();
  }

  add(samples) {
    if (this.peaks.length) this.bounds.push(this.peaks.length);
    for (let i = 0; i < samples.length; i += this.block) {
      let lo = 0;
      let hi = 0;
      for (let j = i, end = Math.min(i + this.block, samples.length); j < end; j += 1) {
        if (samples[j] < lo) lo = samples[j];
        if (samples[j] > hi) hi = samples[j];
      }
      this.peaks.push([lo, hi]);
    }
    this.draw();
  }

  fit() {
    this.span = 0;
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, width, height);
    const mid = height / 2;
    g.fillStyle = "#d0d5dd";
    g.fillRect(0, Math.floor(mid), width, Math.max(1, Math.round(ratio)));
    const n = Math.max(this.peaks.length, this.span);
    if (!this.peaks.length) return;
    g.fillStyle = "#2f5d8a";
    for (let x = 0; x < width; x += 1) {
      const a = Math.floor((x * n) / width);
      const b = Math.max(a + 1, Math.floor(((x + 1) * n) / width));
      if (a >= this.peaks.length) break;
      let lo = 0;
      let hi = 0;
      for (let k = a; k < Math.min(b, this.peaks.length); k += 1) {
        lo = Math.min(lo, this.peaks[k][0]);
        hi = Math.max(hi, this.peaks[k][1]);
      }
      const top = mid - hi * mid * 0.95;
      g.fillRect(x, top, 1, Math.max(1, (hi - lo) * mid * 0.95));
    }
    g.fillStyle = "rgba(154, 77, 31, 0.55)";
    for (const at of this.bounds) g.fillRect(Math.floor((at * width) / n), 0, Math.max(1, Math.round(ratio)), height);
  }
}

// ---------------------------------------------------------------------------------------------
// Streaming: POST with response_format "pcm" and stream_format "sse". The server sends OpenAI's
// speech.audio.delta events (base64 PCM, one per streamed chunk) and then speech.audio.done with
// usage.output_tokens (the frames generated), or an error event if generation fails mid-way.

async function* sseEvents(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart()).join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

async function streamAudio(path, body, { signal, onChunk, keep }) {
  const started = performance.now();
  const res = await api(path, { method: "POST", json: { ...body, response_format: "pcm", stream_format: "sse" }, signal });
  const out = {
    seed: res.headers.get("X-CSM-Seed"), turnIndex: res.headers.get("X-CSM-Turn-Index"),
    chunks: 0, samples: 0, frames: null, firstAudioMs: null, lastChunkMs: null, endMs: null, times: [], pcm: [],
  };
  player.stop();
  let odd = null; // a byte of a sample split across two chunks
  for await (const event of sseEvents(res)) {
    if (event.type === "speech.audio.delta") {
      let bytes = base64Bytes(event.audio);
      if (odd !== null) {
        const joined = new Uint8Array(bytes.length + 1);
        joined[0] = odd;
        joined.set(bytes, 1);
        bytes = joined;
        odd = null;
      }
      if (bytes.length % 2) {
        odd = bytes[bytes.length - 1];
        bytes = bytes.subarray(0, bytes.length - 1);
      }
      const samples = pcm16(bytes);
      out.chunks += 1;
      out.samples += samples.length;
      out.lastChunkMs = performance.now() - started;
      if (out.firstAudioMs === null) out.firstAudioMs = out.lastChunkMs;
      out.times.push(Math.round(out.lastChunkMs));
      if (keep) out.pcm.push(samples);
      try {
        player.queue(samples);
      } catch (err) {
        console.warn("no audio output:", err);
      }
      out.gaps = player.gaps;
      if (onChunk) onChunk(samples, out);
    } else if (event.type === "speech.audio.done") {
      out.frames = event.usage ? event.usage.output_tokens : null;
    } else if (event.type === "error") {
      const e = event.error || {};
      throw new ApiError(0, e.message || "generation failed", e.code); // the stream had begun: 200
    }
  }
  out.endMs = performance.now() - started;
  if (out.frames === null) throw new ApiError(0, "the stream ended before the server finished it", "stream_cut");
  return out;
}

function seconds(x, digits = 2) {
  return `${x.toFixed(digits)} s`;
}

function rtf(out) {
  const audio = out.samples / SAMPLE_RATE;
  return audio > 0 ? (out.lastChunkMs / 1000) / audio : null;
}

function generationOptions() {
  const options = {};
  const temperature = parseFloat($("opt-temperature").value);
  const topK = parseInt($("opt-top-k").value, 10);
  const seed = $("opt-seed").value.trim();
  const maxLength = parseFloat($("opt-max-length").value);
  if (!Number.isNaN(temperature)) options.temperature = temperature;
  if (!Number.isNaN(topK)) options.top_k = topK;
  if (seed) options.seed = seed; // digits become a JSON number in jsonBody()
  if (!Number.isNaN(maxLength)) options.max_audio_length_ms = Math.round(maxLength * 1000);
  return options;
}

// ---------------------------------------------------------------------------------------------
// Speak

let modelName = "csm-1b";
let speakAbort = null;
let speakWave = null;
let savedUrl = null;

function setStat(id, text) {
  $(id).textContent = text;
}

async function speak() {
  const stats = $("speak-stats");
  showError($("speak-error"), null);
  if (speakAbort) speakAbort.abort();
  const abort = new AbortController();
  speakAbort = abort;
  $("speak-go").disabled = true;
  $("speak-stop").disabled = false;
  $("speak-save").hidden = true;
  const options = generationOptions();
  speakWave.reset((options.max_audio_length_ms || 0) / 1000);
  for (const id of ["speak-ttfa", "speak-rtf", "speak-chunks", "speak-duration", "speak-server", "speak-seed"]) setStat(id, "–");
  setStat("speak-state", "waiting…");
  stats.dataset.state = "waiting";
  for (const key of ["chunks", "chunkTimes", "samples", "frames", "firstAudioMs", "endMs", "serverSeconds", "output"]) delete stats.dataset[key];
  try {
    player.context(); // created on the click, so the browser lets it play
  } catch (err) {
    console.warn("no audio output:", err);
  }
  const voice = $("speak-voice").value;
  const speaker = parseInt($("speak-speaker").value, 10);
  const body = { model: modelName, input: $("speak-text").value, ...options };
  if (voice) body.voice = voice;
  if (!Number.isNaN(speaker)) body.speaker = speaker;
  try {
    const out = await streamAudio("/v1/audio/speech", body, {
      signal: abort.signal,
      keep: true,
      onChunk(samples, progress) {
        speakWave.add(samples);
        stats.dataset.state = "streaming";
        stats.dataset.chunks = progress.chunks;
        stats.dataset.chunkTimes = progress.times.join(" ");
        stats.dataset.firstAudioMs = Math.round(progress.firstAudioMs);
        setStat("speak-state", "streaming");
        setStat("speak-ttfa", `${Math.round(progress.firstAudioMs)} ms`);
        setStat("speak-chunks", progress.gaps ? `${progress.chunks} (${progress.gaps} gaps)` : String(progress.chunks));
        setStat("speak-duration", seconds(progress.samples / SAMPLE_RATE));
        setStat("speak-rtf", rtf(progress).toFixed(2));
        setStat("speak-seed", progress.seed || "–");
      },
    });
    const serverSeconds = out.frames * FRAME_SECONDS;
    speakWave.fit();
    Object.assign(stats.dataset, {
      state: "done", chunks: out.chunks, samples: out.samples, frames: out.frames,
      firstAudioMs: Math.round(out.firstAudioMs ?? -1), endMs: Math.round(out.endMs), serverSeconds: serverSeconds.toFixed(2),
      chunkTimes: out.times.join(" "), output: player.ctx ? player.ctx.state : "none",
    });
    setStat("speak-state", `done in ${seconds(out.endMs / 1000, 1)}`);
    setStat("speak-duration", seconds(out.samples / SAMPLE_RATE));
    setStat("speak-server", `${seconds(serverSeconds)} (${out.frames} frames)`);
    if (out.samples) {
      if (savedUrl) URL.revokeObjectURL(savedUrl);
      savedUrl = URL.createObjectURL(wavBlob(out.pcm, SAMPLE_RATE));
      $("speak-save").href = savedUrl;
      $("speak-save").hidden = false;
    } else {
      setStat("speak-rtf", "–");
    }
  } catch (err) {
    if (err.name === "AbortError") {
      stats.dataset.state = "stopped";
      setStat("speak-state", "stopped");
    } else {
      stats.dataset.state = "error";
      setStat("speak-state", "failed");
      report($("speak-error"))(err);
    }
  } finally {
    if (speakAbort === abort) speakAbort = null;
    $("speak-go").disabled = false;
    $("speak-stop").disabled = true;
    refreshHealth();
  }
}

function stopSpeaking() {
  if (speakAbort) speakAbort.abort(); // the server cancels the generation when we hang up
  player.stop();
}

// ---------------------------------------------------------------------------------------------
// Recording (MediaRecorder) into a 24 kHz mono WAV the server reads.

class Recorder {
  constructor(button, onDone, onError) {
    this.button = button;
    this.label = button.textContent;
    this.onDone = onDone;
    this.onError = onError;
    this.recorder = null;
    button.addEventListener("click", () => (this.recorder ? this.stop() : this.start()));
  }

  async start() {
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      this.onError(new ApiError(0, "recording needs a secure page: open it as http://localhost:PORT/ "
        + "or over https (or upload a file instead)", "no_microphone"));
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      this.onError(new ApiError(0, `the microphone cannot be used: ${err.message}`, "no_microphone"));
      return;
    }
    try { player.context(); } catch { /* decoding falls back below */ }
    this.parts = [];
    this.recorder = new MediaRecorder(stream);
    this.recorder.ondataavailable = (event) => { if (event.data.size) this.parts.push(event.data); };
    this.recorder.onstop = () => this.finish(stream);
    this.started = performance.now();
    this.recorder.start();
    this.button.classList.add("recording");
    this.timer = setInterval(() => {
      this.button.textContent = `Stop (${((performance.now() - this.started) / 1000).toFixed(1)} s)`;
    }, 100);
    this.button.textContent = "Stop";
  }

  stop() {
    if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
  }

  async finish(stream) {
    clearInterval(this.timer);
    for (const track of stream.getTracks()) track.stop();
    const type = this.recorder.mimeType;
    this.recorder = null;
    this.button.classList.remove("recording");
    this.button.textContent = this.label;
    try {
      const recorded = new Blob(this.parts, { type });
      const ctx = player.ctx || new OfflineAudioContext(1, 1, SAMPLE_RATE);
      const decoded = await ctx.decodeAudioData(await recorded.arrayBuffer());
      const mono = new Float32Array(decoded.length);
      for (let c = 0; c < decoded.numberOfChannels; c += 1) {
        const channel = decoded.getChannelData(c);
        for (let i = 0; i < mono.length; i += 1) mono[i] += channel[i] / decoded.numberOfChannels;
      }
      this.onDone(wavBlob([mono], decoded.sampleRate), decoded.duration);
    } catch (err) {
      this.onError(new ApiError(0, `the recording could not be read: ${err.message}`, "invalid_audio"));
    }
  }
}

function showPreview(audio, blob) {
  if (audio.src) URL.revokeObjectURL(audio.src);
  if (!blob) {
    audio.removeAttribute("src");
    audio.hidden = true;
    return;
  }
  audio.src = URL.createObjectURL(blob);
  audio.hidden = false;
}

// ---------------------------------------------------------------------------------------------
// Voices

let voices = [];
let voiceRecording = null;

async function loadVoices() {
  const res = await api("/v1/voices");
  voices = (await res.json()).data || [];
  renderVoices();
  fillVoiceSelects();
  if (session) fillPins();
}

const KINDS = { preset: "preset", audio_sample: "uploaded" }; // GET /v1/voices "type"

function voiceKind(voice) {
  return KINDS[voice.type] || voice.type || "";
}

function fillVoiceSelects() {
  const defaults = { "speak-voice": 0, "session-voice-0": 0, "session-voice-1": 1 };
  const groups = [...new Set(voices.map(voiceKind))];
  for (const select of document.querySelectorAll(".voice-select")) {
    const before = select.value;
    const had = select.options.length > 0;
    select.replaceChildren(new Option("(no voice prompt)", ""));
    for (const kind of groups) {
      const members = voices.filter((voice) => voiceKind(voice) === kind).map((voice) => new Option(voice.id, voice.id));
      if (!kind) {
        select.append(...members);
        continue;
      }
      const group = document.createElement("optgroup");
      group.label = kind === "preset" ? "Presets" : kind === "uploaded" ? "Uploaded" : kind;
      group.append(...members);
      select.append(group);
    }
    const index = defaults[select.id] ?? 0;
    if (had && [...select.options].some((o) => o.value === before)) select.value = before;
    else if (voices.length) select.value = select.querySelectorAll("option")[1 + Math.min(index, voices.length - 1)].value;
  }
}

function confirmClick(button, label, action) {
  // Two clicks: the first arms the button for four seconds.
  button.addEventListener("click", () => {
    if (!button.classList.contains("confirm")) {
      button.classList.add("confirm");
      button.textContent = `${label}?`;
      button.timer = setTimeout(() => { button.classList.remove("confirm"); button.textContent = label; }, 4000);
      return;
    }
    clearTimeout(button.timer);
    button.classList.remove("confirm");
    button.textContent = label;
    action();
  });
}

function renderVoices() {
  const list = $("voice-list");
  list.replaceChildren();
  if (!voices.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No voices yet: add one below.";
    list.append(li);
  }
  for (const voice of voices) {
    const li = document.createElement("li");
    li.dataset.voice = voice.id;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = voice.id;
    li.append(name);
    if (voiceKind(voice)) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = voiceKind(voice);
      li.append(tag);
    }
    const use = document.createElement("button");
    use.type = "button";
    use.className = "small";
    use.textContent = "Use";
    use.title = "speak with this voice";
    use.addEventListener("click", () => { $("speak-voice").value = voice.id; $("speak-text").focus(); });
    li.append(use);
    if (voice.type !== "preset") { // presets come with the model and stay
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "small danger remove";
      remove.textContent = "Remove";
      confirmClick(remove, "Remove", () => removeVoice(voice.id));
      li.append(remove);
    }
    list.append(li);
  }
}

async function removeVoice(name) {
  const error = $("voice-error");
  showError(error, null);
  try {
    await api(`/v1/voices/${enc(name)}`, { method: "DELETE" });
    await loadVoices();
  } catch (err) {
    if (err instanceof ApiError && (err.status === 405 || (err.status === 404 && err.code === "not_found"))) {
      // a server without DELETE /v1/voices/{name}
      err.message = `This server cannot remove voices: ${err.message}`;
    }
    report(error)(err);
  }
}

async function uploadVoice(event) {
  event.preventDefault();
  const error = $("voice-error");
  const notes = $("voice-warnings");
  showError(error, null);
  notes.hidden = true;
  const form = new FormData();
  form.append("name", $("voice-name").value.trim());
  form.append("transcript", $("voice-transcript").value);
  const file = $("voice-file").files[0];
  if (file) form.append("audio", file, file.name);
  else if (voiceRecording) form.append("audio", voiceRecording, "recording.wav");
  const button = $("voice-upload");
  button.disabled = true;
  try {
    const res = await api("/v1/voices", { method: "POST", form });
    const info = await res.json();
    $("voice-form").reset();
    voiceRecording = null;
    showPreview($("voice-preview"), null);
    try {
      await loadVoices(); // the new voice is listed before the page says it was added
    } catch (err) {
      report(error)(err);
    }
    const lines = [`Added ${info.id} (${seconds(info.duration_s, 1)}).`, ...(info.warnings || [])];
    notes.replaceChildren(...lines.map((line) => Object.assign(document.createElement("li"), { textContent: line })));
    notes.dataset.warnings = (info.warnings || []).length;
    notes.hidden = false;
  } catch (err) {
    report(error)(err);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Conversations

let session = null; // the open session, as GET /v1/sessions/{id} returned it
let turnRecording = null;

function note(text) {
  $("session-note").textContent = text;
}

async function loadSessions() {
  const list = $("session-list");
  let data;
  try {
    data = (await (await api("/v1/sessions")).json()).data || [];
  } catch (err) {
    list.replaceChildren();
    if (err.code === "sessions_disabled") {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = err.message;
      list.append(li);
      $("session-form").hidden = true;
      return;
    }
    throw err;
  }
  $("session-form").hidden = false;
  list.replaceChildren();
  if (!data.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No conversations yet.";
    list.append(li);
  }
  for (const info of data) {
    const li = document.createElement("li");
    li.dataset.session = info.id;
    if (session && session.id === info.id) li.classList.add("current");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "open";
    const name = Object.assign(document.createElement("span"), { className: "name", textContent: info.id });
    const tag = Object.assign(document.createElement("span"), {
      className: "tag", textContent: `${info.turn_count} turn${info.turn_count === 1 ? "" : "s"} · ${seconds(info.duration_s, 1)}`,
    });
    button.append(name, tag);
    button.addEventListener("click", () => openSession(info.id).catch(report($("conv-error"))));
    li.append(button);
    list.append(li);
  }
}

async function openSession(id) {
  showError($("conv-error"), null);
  const res = await api(`/v1/sessions/${enc(id)}`);
  session = await res.json();
  history.replaceState(null, "", `#session=${enc(session.id)}`); // a reload reopens it
  renderSession();
  for (const li of $("session-list").children) li.classList.toggle("current", li.dataset.session === id);
}

function renderSession() {
  $("session-view").hidden = false;
  $("session-title").textContent = session.id;
  $("session-summary").textContent = `${session.turn_count} turn${session.turn_count === 1 ? "" : "s"}, `
    + seconds(session.duration_s, 1);
  fillPins();
  const list = $("turns");
  list.replaceChildren();
  if (!session.turns.length) {
    list.append(Object.assign(document.createElement("li"), { className: "empty", textContent: "No turns yet: write the first one below." }));
  }
  for (const turn of session.turns) list.append(turnItem(turn));
  $("turn-undo").disabled = !session.turns.length;
  $("session-download").disabled = !session.turns.length;
  $("session-play").disabled = !session.turns.length;
}

// The voice each speaker is pinned to; choosing another pins it (POST /v1/sessions/{id}/voices).
function fillPins() {
  for (const select of document.querySelectorAll(".pin-select")) {
    const speaker = parseInt(select.dataset.speaker, 10);
    const pin = (session.voices || []).find((v) => v.speaker === speaker);
    select.replaceChildren();
    if (!pin || !pin.voice) select.append(new Option(pin ? "(its own clip)" : "(no voice)", ""));
    for (const voice of voices) select.append(new Option(voice.id, voice.id));
    select.value = pin && pin.voice ? pin.voice : "";
    if (pin && pin.voice && select.value !== pin.voice) { // pinned to a voice removed since
      select.prepend(new Option(pin.voice, pin.voice));
      select.value = pin.voice;
    }
  }
}

async function pinVoice(event) {
  const select = event.target;
  if (!session || !select.value) return;
  showError($("conv-error"), null);
  const speaker = parseInt(select.dataset.speaker, 10);
  try {
    const res = await api(`/v1/sessions/${enc(session.id)}/voices`, { method: "POST", json: { speaker, voice: select.value } });
    session = await res.json();
    renderSession();
    note(`Speaker ${speaker} now speaks as ${select.value}.`);
  } catch (err) {
    fillPins();
    report($("conv-error"))(err);
  }
}

async function playSession() {
  showError($("conv-error"), null);
  try {
    player.context();
    const res = await api(`/v1/sessions/${enc(session.id)}/audio?response_format=wav&pause_s=0.3`);
    const { duration } = await player.playFile(await res.arrayBuffer());
    $("session-play").dataset.played = duration.toFixed(2);
    note(`Playing the whole conversation (${seconds(duration, 1)}).`);
  } catch (err) {
    report($("conv-error"))(err);
  }
}

function turnItem(turn) {
  const li = document.createElement("li");
  li.className = `turn speaker-${turn.speaker % 2}`;
  li.dataset.index = turn.index;
  li.dataset.duration = turn.duration_s;
  const meta = document.createElement("div");
  meta.className = "meta";
  const parts = [`${seconds(turn.duration_s)}`];
  if (turn.source && turn.source !== "generated") parts.push(turn.source);
  if (turn.seed !== null && turn.seed !== undefined) parts.push(`seed ${turn.seed}`);
  meta.append(
    Object.assign(document.createElement("span"), { className: "who", textContent: `Speaker ${turn.speaker}` }),
    Object.assign(document.createElement("span"), { className: "facts", textContent: parts.join(" · ") }),
  );
  const play = document.createElement("button");
  play.type = "button";
  play.className = "play";
  play.textContent = "▶ Play";
  play.setAttribute("aria-label", `play turn ${turn.index + 1}`);
  play.addEventListener("click", () => playTurn(li, turn.index).catch(report($("conv-error"))));
  meta.append(play);
  const text = Object.assign(document.createElement("p"), { className: "text", textContent: turn.text });
  li.append(meta, text);
  return li;
}

async function playTurn(li, index) {
  showError($("conv-error"), null);
  for (const other of $("turns").querySelectorAll(".playing")) other.classList.remove("playing");
  li.classList.add("playing");
  try {
    player.context();
    const res = await api(`/v1/sessions/${enc(session.id)}/turns/${index}/audio?response_format=wav`);
    const { duration, ended } = await player.playFile(await res.arrayBuffer());
    li.dataset.played = duration.toFixed(2);
    note(`Playing turn ${index + 1} (${seconds(duration)}).`);
    ended.then(() => li.classList.remove("playing"));
  } catch (err) {
    li.classList.remove("playing");
    throw err;
  }
}

function turnSpeaker() {
  return parseInt(document.querySelector('input[name="turn-speaker"]:checked').value, 10);
}

async function generateTurn(event) {
  event.preventDefault();
  if (!session) return;
  showError($("conv-error"), null);
  const speaker = turnSpeaker();
  const text = $("turn-text").value;
  const live = turnItem({ index: session.turns.length, speaker, text, duration_s: 0, seed: null });
  live.classList.add("live");
  live.querySelector(".play").remove();
  const facts = live.querySelector(".facts");
  facts.textContent = "waiting…";
  const empty = $("turns").querySelector(".empty");
  if (empty) empty.remove();
  $("turns").append(live);
  live.scrollIntoView({ block: "nearest" });
  const status = $("turn-status");
  const button = $("turn-generate");
  button.disabled = true;
  status.textContent = "";
  try {
    player.context();
  } catch (err) {
    console.warn("no audio output:", err);
  }
  try {
    const out = await streamAudio(`/v1/sessions/${enc(session.id)}/turns`, { speaker, input: text, ...generationOptions() }, {
      onChunk(samples, progress) {
        facts.textContent = `streaming · ${progress.chunks} chunk${progress.chunks === 1 ? "" : "s"} · ${seconds(progress.samples / SAMPLE_RATE)}`;
      },
    });
    status.textContent = `first audio ${Math.round(out.firstAudioMs)} ms · ${out.chunks} chunks · RTF ${rtf(out).toFixed(2)}`;
    status.dataset.chunks = out.chunks;
    $("turn-text").value = "";
    await openSession(session.id);
    await loadSessions();
  } catch (err) {
    live.remove();
    report($("conv-error"))(err);
  } finally {
    button.disabled = false;
    refreshHealth();
  }
}

async function addRecordedTurn() {
  if (!session || !turnRecording) return;
  showError($("conv-error"), null);
  const form = new FormData();
  form.append("speaker", String(turnSpeaker()));
  form.append("transcript", $("turn-text").value);
  form.append("audio", turnRecording, "recording.wav");
  const button = $("turn-add-recording");
  button.disabled = true;
  try {
    await api(`/v1/sessions/${enc(session.id)}/recordings`, { method: "POST", form });
    turnRecording = null;
    button.hidden = true;
    showPreview($("turn-preview"), null);
    $("turn-text").value = "";
    await openSession(session.id);
    await loadSessions();
  } catch (err) {
    report($("conv-error"))(err);
  } finally {
    button.disabled = false;
  }
}

async function undoTurn() {
  showError($("conv-error"), null);
  try {
    const res = await api(`/v1/sessions/${enc(session.id)}/turns/last`, { method: "DELETE" });
    const { removed } = await res.json();
    note(`Removed speaker ${removed.speaker}'s turn “${removed.text}”.`);
    if (!$("turn-text").value) $("turn-text").value = removed.text; // to say it again differently
    await openSession(session.id);
    await loadSessions();
  } catch (err) {
    report($("conv-error"))(err);
  }
}

async function downloadSession() {
  showError($("conv-error"), null);
  try {
    const res = await api(`/v1/sessions/${enc(session.id)}/audio?response_format=wav&pause_s=0.3`);
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    const link = Object.assign(document.createElement("a"), { href: url, download: `${session.id}.wav` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    note(`Downloaded ${session.id}.wav (${Math.round(blob.size / 1024)} KB, 0.3 s between turns).`);
  } catch (err) {
    report($("conv-error"))(err);
  }
}

async function deleteSession() {
  showError($("conv-error"), null);
  try {
    await api(`/v1/sessions/${enc(session.id)}`, { method: "DELETE" });
    session = null;
    $("session-view").hidden = true;
    history.replaceState(null, "", location.pathname);
    await loadSessions();
  } catch (err) {
    report($("conv-error"))(err);
  }
}

async function createSession(event) {
  event.preventDefault();
  showError($("conv-error"), null);
  const body = { voices: {} };
  const id = $("session-id").value.trim();
  if (id) body.id = id;
  for (const speaker of [0, 1]) {
    const voice = $(`session-voice-${speaker}`).value;
    if (voice) body.voices[speaker] = voice;
  }
  try {
    const res = await api("/v1/sessions", { method: "POST", json: body });
    const info = await res.json();
    $("session-id").value = "";
    await loadSessions();
    await openSession(info.id);
    $("turn-text").focus();
  } catch (err) {
    report($("conv-error"))(err);
  }
}

// ---------------------------------------------------------------------------------------------
// The server's state (GET /health needs no key)

async function refreshHealth() {
  const status = $("server-status");
  try {
    const res = await fetch("/health", { cache: "no-store" });
    const health = await res.json();
    modelName = health.model || modelName;
    const busy = health.busy || health.queued > 0;
    status.className = `status${busy ? " busy" : ""}`;
    const streams = health.active_streams ? `${health.active_streams} generating, ` : "";
    const state = health.status !== "ok" ? health.status : busy ? `busy: ${streams}${health.queued} waiting` : "ready";
    status.replaceChildren(Object.assign(document.createElement("span"), { className: "dot" }),
      `${health.model} · ${state} · ${health.completed ?? 0} requests done`);
  } catch (err) {
    status.className = "status down";
    status.replaceChildren(Object.assign(document.createElement("span"), { className: "dot" }),
      `the server cannot be reached (${err.message})`);
  }
}

// ---------------------------------------------------------------------------------------------

let wired = false;

function wire() {
  if (wired) return;
  wired = true;
  speakWave = new Wave($("speak-wave"));
  $("speak-go").addEventListener("click", speak);
  $("speak-stop").addEventListener("click", stopSpeaking);
  $("speak-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) speak();
  });
  $("key-forget").addEventListener("click", forgetKey);
  $("voice-form").addEventListener("submit", uploadVoice);
  $("voice-file").addEventListener("change", () => {
    voiceRecording = null;
    const file = $("voice-file").files[0];
    showPreview($("voice-preview"), file || null);
  });
  new Recorder($("voice-record"), (blob, duration) => {
    voiceRecording = blob;
    $("voice-file").value = "";
    showPreview($("voice-preview"), blob);
    $("voice-record").title = `recorded ${seconds(duration, 1)}`;
  }, report($("voice-error")));
  $("session-form").addEventListener("submit", createSession);
  $("turn-form").addEventListener("submit", generateTurn);
  $("turn-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("turn-form").requestSubmit();
  });
  $("turn-undo").addEventListener("click", undoTurn);
  $("session-download").addEventListener("click", downloadSession);
  $("session-play").addEventListener("click", playSession);
  for (const select of document.querySelectorAll(".pin-select")) select.addEventListener("change", pinVoice);
  confirmClick($("session-delete"), "Delete", deleteSession);
  new Recorder($("turn-record"), (blob) => {
    turnRecording = blob;
    showPreview($("turn-preview"), blob);
    $("turn-add-recording").hidden = false;
  }, report($("conv-error")));
  $("turn-add-recording").addEventListener("click", addRecordedTurn);
  window.addEventListener("focus", refreshHealth);
}

async function init() {
  wire();
  $("key-forget").hidden = !apiKey;
  await refreshHealth();
  try {
    await loadVoices();
  } catch (err) {
    report($("voice-error"))(err);
  }
  try {
    await loadSessions();
    const wanted = new URLSearchParams(location.hash.slice(1)).get("session");
    if (wanted && !$("session-form").hidden) await openSession(wanted);
  } catch (err) {
    report($("conv-error"))(err);
  }
  document.body.dataset.ready = "1";
}

init();
