/**
 * steps/names: the directory names of the job/step/task tree, both ways.
 *
 *   job_<id>/step_<n|batch|extern|interactive>/{slurm, user/task_<n>, user/task_special}
 * Ids reaching here were validated by the protocol schema; parse* functions
 * recognise names found on disk (recovery) and reject anything else, so a stray
 * directory is never mistaken for a job.
 */
import path from 'node:path';
import { STEP_NAMES } from './model.js';

export { SYSTEM_LEAF } from '../scope/lifecycle.js';
import { SYSTEM_LEAF } from '../scope/lifecycle.js';
export const SLURM_LEAF = 'slurm';
export const USER_DIR = 'user';
export const SPECIAL_TASK = 'task_special';

export type Leaf = { task: number } | 'slurm' | 'special';

export const jobName = (job: string) => `job_${job}`;
export const stepName = (step: string) => `step_${step}`;
export const taskName = (task: number) => `task_${task}`;

export function parseJobName(name: string): string | null {
  const m = /^job_([1-9][0-9]{0,9})$/.exec(name);
  return m ? m[1] : null;
}

export function parseStepName(name: string): string | null {
  const m = /^step_(0|[1-9][0-9]{0,9}|[a-z]+)$/.exec(name);
  if (!m) return null;
  if (/^[a-z]/.test(m[1]) && !(STEP_NAMES as readonly string[]).includes(m[1])) return null;
  return m[1];
}

export function parseTaskName(name: string): number | 'special' | null {
  if (name === SPECIAL_TASK) return 'special';
  const m = /^task_(0|[1-9][0-9]{0,9})$/.exec(name);
  return m ? Number(m[1]) : null;
}

export class TreePaths {
  constructor(readonly scope: string) {}
  job(job: string): string {
    return path.join(this.scope, jobName(job));
  }
  step(job: string, step: string): string {
    return path.join(this.job(job), stepName(step));
  }
  user(job: string, step: string): string {
    return path.join(this.step(job, step), USER_DIR);
  }
  leaf(job: string, step: string, leaf: Leaf): string {
    if (leaf === 'slurm') return path.join(this.step(job, step), SLURM_LEAF);
    if (leaf === 'special') return path.join(this.user(job, step), SPECIAL_TASK);
    return path.join(this.user(job, step), taskName(leaf.task));
  }
  system(): string {
    return path.join(this.scope, SYSTEM_LEAF);
  }
}
