// The serial console page: xterm.js (with its fit addon) over the page's console WebSocket
// (data-ws on #terminal). The server sends the recent output first, then live output, as
// binary messages; what is typed goes back as binary messages (UTF-8 keystrokes).
"use strict";

(() => {
  const el = document.getElementById("terminal");
  const status = document.getElementById("console-status");
  if (!el || !status) return;
  const say = (text, state) => {
    status.textContent = text;
    el.dataset.state = state;
  };
  if (!window.Terminal || !window.FitAddon) {
    say("The terminal library did not load (the console's browser libraries are not installed on the headnode).", "failed");
    return;
  }

  const term = new window.Terminal({ cursorBlink: true, scrollback: 10000, fontSize: 14 });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(el);
  fit.fit();
  window.addEventListener("resize", () => fit.fit());
  // Scripts (and the browser tests) read the screen through it.
  window.nereidTerminal = term;

  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + el.dataset.ws;
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  say("Connecting…", "connecting");
  ws.onopen = () => {
    const vmState = el.dataset.vmState || "running";
    say(vmState === "running"
      ? "Connected: what you type goes to the guest."
      : "Connected, but the VM is " + vmState + ": this is its console log; what you type reaches it once it runs.", "connected");
    term.focus();
  };
  ws.onmessage = (e) => term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
  ws.onclose = (e) => {
    const why = e.reason || (e.code === 1006 ? "the connection was refused or lost (is the VM's server up? are you still signed in?)" : "");
    say("Disconnected" + (why ? ": " + why : "") + ". Reload the page to connect again.", "disconnected");
  };

  const utf8 = new TextEncoder();
  const send = (bytes) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(bytes);
  };
  term.onData((d) => send(utf8.encode(d)));
  // Keys xterm reports as raw bytes (some mouse reports): one byte per character.
  term.onBinary((d) => send(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff)));
})();
