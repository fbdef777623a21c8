// Types for what the pages load from web/node_modules by URL. The pages import
// them as "/node_modules/…" (the broker serves those paths); these patterns map
// the URLs to the packages' own typings, or to the little of them the pages use.

declare module "*/node_modules/@xterm/xterm/lib/xterm.mjs" {
  export * from "@xterm/xterm";
}

declare module "*/node_modules/@xterm/addon-fit/lib/addon-fit.mjs" {
  export * from "@xterm/addon-fit";
}

// noVNC ships no typings: the part of its RFB client that the screen page uses.
declare module "*/node_modules/@novnc/novnc/core/rfb.js" {
  interface RFBEvents {
    connect: CustomEvent<Record<string, never>>;
    disconnect: CustomEvent<{ clean: boolean }>;
    desktopname: CustomEvent<{ name: string }>;
    clipboard: CustomEvent<{ text: string }>;
    securityfailure: CustomEvent<{ status: number; reason?: string }>;
  }

  // What noVNC accepts instead of a WebSocket (the screen replay feeds a recording through one).
  export interface RawChannel {
    send(data: ArrayBufferLike | Uint8Array): void;
    close(): void;
    binaryType: string;
    protocol: string;
    readyState: number | string;
    onopen: ((event: Event) => void) | null;
    onmessage: ((event: { data: ArrayBufferLike | Uint8Array }) => void) | null;
    onerror: ((event: Event) => void) | null;
    onclose: ((event: { code: number; reason: string; wasClean: boolean }) => void) | null;
  }

  export default class RFB extends EventTarget {
    constructor(target: HTMLElement, urlOrChannel: string | WebSocket | RawChannel, options?: { shared?: boolean });
    scaleViewport: boolean;
    resizeSession: boolean;
    viewOnly: boolean;
    focusOnClick: boolean;
    focus(): void;
    disconnect(): void;
    clipboardPasteFrom(text: string): void;
    addEventListener<K extends keyof RFBEvents>(type: K, listener: (event: RFBEvents[K]) => void): void;
    addEventListener(type: string, listener: EventListenerOrEventListenerObject | null): void;
  }
}

// The asciinema player's bundle (a classic script) sets window.AsciinemaPlayer.
interface Window {
  AsciinemaPlayer: typeof import("asciinema-player");
}
