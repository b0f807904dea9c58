// A progress line on stderr for long benchmark runs: on a TTY a bar redrawn in place
// (at most 10 times a second); otherwise (--progress into a file or pipe) one line per run.
export class Progress {
  private label = '';
  private index = 0;
  private total = 0;
  private fraction = 0;
  private lastDraw = 0;
  private readonly t0 = Date.now();
  private runStart = Date.now();
  private drawn = false;

  constructor(private readonly enabled: boolean, private readonly tty = !!process.stderr.isTTY,
    private readonly out: NodeJS.WritableStream = process.stderr) {}

  start(label: string, index: number, total: number): void {
    if (!this.enabled) return;
    this.label = label;
    this.index = index;
    this.total = total;
    this.fraction = 0;
    this.runStart = Date.now();
    if (this.tty) this.draw(true);
    else this.out.write(`[${index}/${total}] ${label} ...\n`);
  }

  update(fraction: number): void {
    if (!this.enabled || !this.tty) return;
    this.fraction = Math.max(this.fraction, Math.min(1, fraction));
    this.draw(false);
  }

  /** Prints a line above the bar. */
  log(line: string): void {
    if (!this.enabled) return;
    if (this.tty && this.drawn) this.out.write('\r\x1b[K');
    this.out.write(line + '\n');
    if (this.tty && this.drawn) this.draw(true);
  }

  end(): void {
    if (!this.enabled) return;
    if (this.tty && this.drawn) this.out.write('\r\x1b[K');
    this.drawn = false;
  }

  private draw(force: boolean): void {
    const now = Date.now();
    if (!force && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    const width = 24;
    const filled = Math.round(this.fraction * width);
    const bar = '█'.repeat(filled) + '░'.repeat(width - filled);
    const run = ((now - this.runStart) / 1000).toFixed(1);
    const all = ((now - this.t0) / 1000).toFixed(0);
    const cols = (process.stderr as { columns?: number }).columns ?? 100;
    const text = `[${this.index}/${this.total}] ${bar} ${String(Math.round(this.fraction * 100)).padStart(3)}% ${run}s (${all}s) ${this.label}`;
    this.out.write('\r\x1b[K' + text.slice(0, cols - 1));
    this.drawn = true;
  }
}
