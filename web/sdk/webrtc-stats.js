// The browser WebRTC collector: see docs/collector.md (work in progress).
