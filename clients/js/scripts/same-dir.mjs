// Fails when two directories differ: the committed `dist/` must be what `tsc` makes of `src/`
// (the engine serves `dist/` to the browser page, so a stale copy would ship old code).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const [a, b] = process.argv.slice(2);
const files = (dir) => readdirSync(dir).sort();
const fa = files(a), fb = files(b);
let bad = JSON.stringify(fa) !== JSON.stringify(fb) ? [`file lists differ: ${fa} vs ${fb}`] : [];
for (const f of fa.filter((f) => fb.includes(f))) {
  if (!readFileSync(join(a, f)).equals(readFileSync(join(b, f)))) bad.push(`${f} differs`);
}
if (bad.length) {
  console.error(`${a} is not what tsc makes of src/ (run \`npm run build\` and commit ${a}):\n  ${bad.join('\n  ')}`);
  process.exit(1);
}
console.log(`${a} matches src/ (${fa.length} files)`);
