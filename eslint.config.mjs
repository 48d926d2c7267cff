// ESLint (flat config) with typescript-eslint: correctness rules, not style
// (Prettier owns formatting). `npm run lint` runs this and `prettier --check`.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'build/**', 'node_modules/**', 'vm-images/**', '.ci/**', 'src/console/assets/vendor/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    rules: {
      // Unused names are caught by tsc (noUnusedLocals); `_x` parameters are deliberate.
      '@typescript-eslint/no-unused-vars': ['error', { args: 'none', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // Empty hooks and silent loggers are the point of some objects.
      '@typescript-eslint/no-empty-function': 'off',
      // Bindings and worker results are typed at the boundary; `any` is allowed in tests' JSON helpers.
      '@typescript-eslint/no-explicit-any': 'off',
      // `require()` loads the native addon and CommonJS-only modules on purpose.
      '@typescript-eslint/no-require-imports': 'off',
      'no-constant-condition': ['error', { checkLoops: false }],
      'no-empty': ['error', { allowEmptyCatch: true }],
      'prefer-const': 'error',
      // `let x = fallback; try { x = ... } catch {}` reads clearly; keep it.
      'no-useless-assignment': 'off',
      eqeqeq: ['error', 'always', { null: 'ignore' }],
    },
  },
  {
    files: ['**/*.js', '**/*.cjs', '**/*.mjs'],
    ignores: ['src/console/assets/**'],
    languageOptions: {
      globals: { require: 'readonly', module: 'writable', process: 'readonly', console: 'readonly', __dirname: 'readonly' },
    },
  },
  {
    // The web console's browser modules (served as they are, no build step).
    files: ['src/console/assets/**/*.js'],
    languageOptions: {
      sourceType: 'module',
      globals: Object.fromEntries(
        [
          'window',
          'document',
          'location',
          'history',
          'navigator',
          'sessionStorage',
          'performance',
          'fetch',
          'URL',
          'URLSearchParams',
          'AbortController',
          'TextDecoderStream',
          'ResizeObserver',
          'Node',
          'setTimeout',
          'clearTimeout',
          'setInterval',
          'clearInterval',
          'requestAnimationFrame',
          'console',
        ].map((g) => [g, 'readonly']),
      ),
    },
    rules: { '@typescript-eslint/no-unused-vars': ['error', { args: 'none', varsIgnorePattern: '^_' }] },
  },
);
