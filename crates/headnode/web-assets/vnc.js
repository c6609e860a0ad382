// The graphical console page: noVNC's RFB over the page's VNC WebSocket (data-ws on
// #vnc-screen), drawing the guest's screen into that container, with a status line
// (connecting, connected, disconnected and why) and a Ctrl-Alt-Del button.
import RFB from "/assets/vendor/@novnc/novnc/core/rfb.js";

const screen = document.getElementById("vnc-screen");
const status = document.getElementById("vnc-status");
const cad = document.getElementById("vnc-cad");

const say = (text, state) => {
  status.textContent = text;
  screen.dataset.state = state;
};

if (screen && status) {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + screen.dataset.ws;
  // Our own WebSocket, handed to RFB, so that the server's close reason can be shown.
  const sock = new WebSocket(url, ["binary"]);
  let closed = null;
  sock.addEventListener("close", (e) => { closed = e; });
  say("Connecting…", "connecting");

  const rfb = new RFB(screen, sock, { shared: true });
  rfb.scaleViewport = true;
  rfb.background = "#222";
  // Scripts (and the browser tests) reach the session through it.
  window.nereidVnc = rfb;
  let name = "";

  rfb.addEventListener("desktopname", (e) => { name = e.detail.name || ""; });
  rfb.addEventListener("connect", () => {
    say("Connected" + (name ? " to " + name : "") + ".", "connected");
    if (cad) cad.disabled = false;
  });
  rfb.addEventListener("securityfailure", (e) => {
    say("Refused by the VM's VNC server: " + (e.detail.reason || "security failure") + ".", "disconnected");
  });
  rfb.addEventListener("disconnect", (e) => {
    if (cad) cad.disabled = true;
    let why = closed && closed.reason ? closed.reason : "";
    if (!why && !e.detail.clean) why = "the connection was refused or lost (has the VM stopped? are you still signed in?)";
    say("Disconnected" + (why ? ": " + why : "") + ". Reload the page to connect again.", "disconnected");
  });
  if (cad) {
    cad.addEventListener("click", () => {
      rfb.sendCtrlAltDel();
      rfb.focus();
    });
  }
}
