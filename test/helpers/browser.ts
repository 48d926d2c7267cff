/**
 * Test helper: a real browser for the web console's tests. Debian's
 * chromium (/usr/bin/chromium, from tools/install-system-deps.sh) driven by
 * playwright-core; no browser is ever downloaded. A missing chromium fails
 * the test loudly.
 *
 *   const b = await openBrowser();             // fresh profile in a temp dir
 *   const page = await b.page();
 *   await b.shot(page, 'timeline');            // artifacts dir / timeline.png
 *   await b.close();
 *
 * Screenshots go to $REWIND_TEST_ARTIFACTS/console (when set) or to a temp
 * directory; `b.artifacts` says which.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

export const CHROMIUM = process.env.REWIND_CHROMIUM ?? '/usr/bin/chromium';

export interface TestBrowser {
  context: BrowserContext;
  artifacts: string;
  page(): Promise<Page>;
  shot(page: Page, name: string): Promise<string>;
  close(): Promise<void>;
}

export async function openBrowser(opts: { width?: number; height?: number } = {}): Promise<TestBrowser> {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: install Debian's chromium (sudo bash tools/install-system-deps.sh)`);
  }
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'rwc-profile-'));
  const artifacts = process.env.REWIND_TEST_ARTIFACTS
    ? path.join(process.env.REWIND_TEST_ARTIFACTS, 'console')
    : fs.mkdtempSync(path.join(os.tmpdir(), 'rwc-shots-'));
  fs.mkdirSync(artifacts, { recursive: true });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: opts.width ?? 1400, height: opts.height ?? 900 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  return {
    context,
    artifacts,
    page: async () => {
      const p = await context.newPage();
      p.setDefaultTimeout(30_000);
      return p;
    },
    shot: async (page, name) => {
      const file = path.join(artifacts, `${name}.png`);
      await page.screenshot({ path: file, fullPage: true });
      return file;
    },
    close: async () => {
      await context.close().catch(() => undefined);
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Errors the page reported (uncaught exceptions, console errors other than failed requests the test expects). */
export function collectPageErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) errors.push(`console: ${m.text()}`);
  });
  return errors;
}

/** Waits until the timeline chart has drawn at least `n` answers. */
export async function waitDrawn(page: Page, n = 1): Promise<void> {
  await page.waitForFunction(
    (k) => Number((globalThis as any).document.querySelector('#timeline-chart')?.getAttribute('data-drawn') ?? 0) >= k,
    n,
  );
}
